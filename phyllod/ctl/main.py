"""``phyllodctl``: look at and steer a running phyllod over D-Bus.

A thin client of the contract in docs/dbus-api.md: it reads everything with one
``GetManagedObjects`` call, hands device names (path, id or vendor:product) to the
daemon to resolve, and prints either aligned tables for people (device strings
escaped, since a device names itself) or JSON for scripts.

Exit status (scripts may rely on it):
  0  success
  1  the operation failed (Error.Failed, Error.Denied, Error.Busy, any other error)
  2  usage error
  3  no such device, guest or request (Error.NoSuchDevice, .NoSuchGuest, .NoSuchRequest)
  4  not authorized (Error.NotAuthorized, the bus's AccessDenied)
  5  phyllod is not running, or the bus cannot be reached

Errors are one ``phyllodctl: <message>`` line per line of the message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from phyllod import __version__
from phyllod.contract import (
    DEVICE_IFACE,
    DEVICE_PROPERTIES,
    MANAGER_IFACE,
    MANAGER_PROPERTIES,
    REQUEST_IFACE,
    ROOT,
    request_path,
)
from phyllod.ctl.bus import Client, connect
from phyllod.ctl.errors import EXIT_CODES_HELP, CtlError, ExitCode
from phyllod.ctl.monitor import MATCH_RULES, Event, Labels, event_for, human_line, json_line
from phyllod.ctl.output import (
    device_table,
    devices,
    escape,
    guest_table,
    guests,
    iommu_records,
    iommu_table,
    key_value,
    one_per_line,
    request_table,
    requests,
    to_json,
)

PROG = "phyllodctl"

Command = Callable[[Client, argparse.Namespace], Awaitable[Iterable[str]]]


def _options(suppress: bool, output: bool) -> argparse.ArgumentParser:
    """Options valid before and after the command (``phyllodctl list --json``).

    The copy on the subcommands defaults to SUPPRESS so it does not overwrite a
    value given before the command.
    """
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--bus", default=default("system"), metavar="system|session|ADDRESS",
                   help="the bus phyllod is on (default: system; an address such as "
                        "unix:path=/run/x/bus for tests)")
    p.add_argument("--no-ask-password", dest="interactive", action="store_false",
                   default=default(True),
                   help="do not let polkit ask for a password (fail with status 4 instead)")
    if output:
        p.add_argument("--json", action="store_true", default=default(False),
                       help="machine-readable output")
        p.add_argument("--no-legend", dest="legend", action="store_false",
                       default=default(True), help="no header line")
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, parents=[_options(False, True)], epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show and steer phyllod, the USB/PCI passthrough daemon.\n\nDEVICE is "
                    "an object path, a device id (usb:1-2, pci:0000:03:00.0) or\n"
                    "vendor:product (when only one present device has those ids).")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    read, write = [_options(True, True)], [_options(True, False)]

    def command(name: str, parents: list[argparse.ArgumentParser], text: str,
                run: Command) -> argparse.ArgumentParser:
        c = sub.add_parser(name, parents=parents, help=text, description=text,
                           epilog=EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        c.set_defaults(run=run)
        return c

    command("list", read, "list the present devices", list_devices).add_argument(
        "--ids", action="store_true", help="only the device ids, one per line")
    command("guests", read, "list the guests", list_guests).add_argument(
        "--names", action="store_true", help="only the guest names, one per line")
    command("show", read, "all properties of one device", show).add_argument("device")
    command("explain", read, "where a device is and why", explain).add_argument("device")
    command("status", read, "the daemon: version, policy, libvirt", status)
    command("iommu", read, "IOMMU groups: which PCI functions could be passed, and why not",
            iommu)
    attach = command("attach", write, "put a device in a guest (manual override)",
                     mutation("Attach", "device", "guest"))
    attach.add_argument("device")
    attach.add_argument("guest", help="guest name or UUID")
    command("detach", write, "keep a device on the host (manual override)",
            mutation("Detach", "device")).add_argument("device")
    command("clear", write, "forget the manual override: the policy decides again",
            mutation("ClearOverride", "device")).add_argument("device")
    command("reload", write, "read the policy again (a broken one is refused)",
            mutation("Reload"))
    command("requests", read, "the open questions of ask mode: where should a newly "
            "plugged device go?", list_requests).add_argument(
        "--ids", action="store_true", help="only the request numbers, one per line")
    answer_cmd = command("answer", write, "answer a request: send the device to GUEST, or "
                         "keep it on the host with --host", answer)
    answer_cmd.add_argument("request", metavar="ID", help="request number (phyllodctl requests)")
    where = answer_cmd.add_mutually_exclusive_group(required=True)
    where.add_argument("guest", nargs="?", help="guest name or UUID (one of those offered)")
    where.add_argument("--host", action="store_true", help="keep the device on the host")
    answer_cmd.add_argument("--remember", action="store_true",
                            help="answer the same way for this device from now on "
                                 "(undo with phyllodctl forget)")
    command("forget", write, "forget the remembered answer for a device (by name, or by "
            "its identity as 'phyllodctl status' lists it)",
            mutation("Forget", "device")).add_argument("device")
    command("monitor", read, "print changes as they happen, until interrupted", monitor)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; exits 2 (argparse's usage error) if it is wrong."""
    return _parser().parse_args(argv)


# The commands: each returns the lines to print, so the D-Bus part stays thin.

async def list_devices(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """One row per device; ``--ids`` feeds shell completion."""
    objects = await client.managed_objects()
    if args.ids:
        return one_per_line(d.get("Id", "") for d in devices(objects))
    return [to_json(devices(objects))] if args.json else device_table(objects, args.legend)


async def list_guests(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """One row per guest; ``--names`` feeds shell completion."""
    objects = await client.managed_objects()
    if args.names:
        return one_per_line(g.get("Name", "") for g in guests(objects))
    return [to_json(guests(objects))] if args.json else guest_table(objects, args.legend)


async def show(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """The daemon resolves the name (path, id, vendor:product), so the rules live in one place."""
    (path,) = await client.manager("GetDevice", args.device)
    props = await client.properties(path, DEVICE_IFACE)
    return [to_json(props)] if args.json else key_value(props, DEVICE_PROPERTIES)


async def explain(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """The daemon's paragraph; its line breaks are kept, everything else escaped."""
    (text,) = await client.manager("Explain", args.device)
    return [to_json(text)] if args.json else [escape(text, keep="\n")]


async def status(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """The Manager's properties: the root is not among GetManagedObjects' objects."""
    props = await client.properties(ROOT, MANAGER_IFACE)
    if args.json:
        return [to_json(props)]
    return key_value(props, MANAGER_PROPERTIES, multiline={"PolicyError"})


async def iommu(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """The daemon's verdicts, computed where sysfs is read."""
    (groups,) = await client.manager("GetIommuGroups")
    return [to_json(iommu_records(groups))] if args.json else iommu_table(groups, args.legend)


async def list_requests(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """Open requests; ``--ids`` feeds shell completion."""
    objects = await client.managed_objects()
    if args.ids:
        return one_per_line(r["Id"] for r in requests(objects))
    if args.json:
        return [to_json(requests(objects))]
    return request_table(objects, time.time(), args.legend)


async def answer(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """Request.Answer on ``requests/ID``; returns once the device settled, like attach."""
    number = args.request.rsplit("/", 1)[-1]
    if not number.isdigit():
        raise CtlError(ExitCode.USAGE, f"a request is named by its number "
                                       f"(phyllodctl requests), not {args.request!r}")
    await client.call(request_path(int(number)), REQUEST_IFACE, "Answer", "sb",
                      ["" if args.host else args.guest, args.remember], mutation=True)
    return []


def mutation(member: str, *fields: str) -> Command:
    """A command that calls one mutating Manager method and prints nothing.

    The daemon answers once the device settled and phyllod's error names carry
    the outcome, so silence on success is all a script or a person needs.
    """
    async def call(client: Client, args: argparse.Namespace) -> Iterable[str]:
        await client.manager(member, *(getattr(args, f) for f in fields), mutation=True)
        return []
    return call


async def monitor(client: Client, args: argparse.Namespace) -> Iterable[str]:
    """Print events until SIGINT/SIGTERM (then exit 0) or the bus goes away (exit 5).

    Signals are queued by the bus's handler and printed here, so output errors
    (a closed pipe) surface in this coroutine rather than inside dbus-fast.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, queue.put_nowait, None)
    lost = loop.create_task(client.wait_closed())
    lost.add_done_callback(lambda _: queue.put_nowait(()))
    await client.watch(MATCH_RULES, lambda *signal_: queue.put_nowait(signal_))
    labels = Labels()
    labels.reset(await client.managed_objects())  # after subscribing: nothing falls between
    # A first line once subscribed, as udevadm monitor prints: a script (or a
    # test) knows from here on that no change is missed.
    ready = Event(datetime.now().astimezone(), "monitoring", "phyllod")
    print(json_line(ready) if args.json else human_line(ready, labels), flush=True)
    while (item := await queue.get()) is not None:
        if not item:
            raise CtlError(ExitCode.UNREACHABLE, "lost the connection to the bus")
        event = event_for(labels, datetime.now().astimezone(), *item)
        if event is None:
            continue
        if event.kind == "started":
            with contextlib.suppress(CtlError):  # gone again: the next signal says so
                labels.reset(await client.managed_objects())
        print(json_line(event) if args.json else human_line(event, labels), flush=True)
    return []  # `lost` ends by itself when run() closes the connection


async def run(args: argparse.Namespace) -> None:
    """Connect, run the command, print its lines."""
    client = Client(await connect(args.bus), args.interactive)
    try:
        for line in await args.run(client, args):
            print(line)
    finally:
        await client.close()


def print_error(message: str) -> None:
    """``phyllodctl: <message>`` per line: daemon texts are escaped like any other."""
    for line in escape(message, keep="\n").splitlines():
        print(f"{PROG}: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The entry point: the exit status is the module docstring's table."""
    args = parse_args(argv)
    # A device name the locale cannot encode must not end the program.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        asyncio.run(run(args))
    except CtlError as e:
        print_error(e.message)
        return e.code
    except KeyboardInterrupt:
        print_error("interrupted (a request already sent may still be carried out)")
        return ExitCode.FAILED
    except BrokenPipeError:
        # The reader went away (`phyllodctl monitor | head`); say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
