"""What one local user can do to everyone's phyllod over the bus, and what it no longer can.

Issue 16, section 1. Real parts: the private system bus with the shipped
policy, a polkit that never answers nobody's checks (stalling_polkit.py) or
the real polkitd, nobody as the caller (setpriv), and phyllod either as the
daemon subprocess or, where a test needs short timeouts or a device the
kernel adapters would never produce, as its bus service in this process on
the same private bus with stand-in operations.

The client half (this file run as a script, as nobody) holds authorization
checks open on several connections until told to leave.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

HERE = Path(__file__).resolve()
NAME = "me.phyllo.Phyllod1"
ROOT = "/me/phyllo/Phyllod1"
MANAGER = "me.phyllo.Phyllod1.Manager"
BUSY = "me.phyllo.Phyllod1.Error.Busy"


# ====================================================================== the client

async def hold(address: str, connections: int, calls: int) -> None:
    """``calls`` interactive Detach/Attach calls on each of ``connections``; print what
    came back within a few seconds, wait for a line on stdin, leave, print again."""
    buses = [await MessageBus(bus_address=address).connect() for _ in range(connections)]
    replies: dict[str, int] = {}
    pending: list[asyncio.Future] = []

    def count(future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            reply = future.result()
            name = reply.error_name if reply.message_type is MessageType.ERROR else "return"
            replies[name] = replies.get(name, 0) + 1

    for bus in buses:
        for i in range(calls):
            member, sig, body = (("Detach", "s", ["usb:1-2"]) if i % 2 else
                                 ("Attach", "ss", ["usb:1-2", "test"]))
            future = asyncio.ensure_future(bus.call(Message(
                destination=NAME, path=ROOT, interface=MANAGER, member=member, signature=sig,
                body=body, flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)))
            future.add_done_callback(count)
            pending.append(future)
    await asyncio.sleep(3.0)
    waiting = sum(not f.done() for f in pending)
    print(json.dumps({"replies": replies, "waiting": waiting}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for bus in buses:
        bus.disconnect()
    print(json.dumps({"left": True}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()
    asyncio.run(hold(args.address, args.connections, args.calls))
    sys.exit(0)

# ====================================================================== the tests

import private_bus  # noqa: E402
import pytest  # noqa: E402
from daemon_process import child_env  # noqa: E402
from phyllod_on_bus import Phyllod, poll  # noqa: E402

from phyllod.bus import polkit  # noqa: E402
from phyllod.bus.service import BusService, Snapshot  # noqa: E402
from phyllod.contract import POLKIT_ATTACH, POLKIT_DETACH, device_path  # noqa: E402
from phyllod.core.model import Assignment, Device, Guest, GuestState, State, Subsystem  # noqa: E402

pytestmark = pytest.mark.integration

#: A second unprivileged user, whom the stalling polkit allows everything.
OTHER_USER = 1000
LIMITS = polkit.DEFAULT_LIMITS


def _as_user(uid: int, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           *argv], capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": "/usr/bin:/bin"}, check=False)


def _stats(phyllod: Phyllod, pattern: str) -> str:
    """SIGUSR1's bus line once it matches ``pattern``."""
    assert phyllod.proc is not None
    mark = phyllod.proc.mark()
    phyllod.proc.signal(signal.SIGUSR1)
    return phyllod.proc.wait_log(rf"bus: .*{pattern}.*", start=mark).group(0)


@pytest.mark.reliability
def test_checks_that_never_finish_leave_room_for_everyone_and_are_cancelled(
        phyllod: Phyllod, stalling_polkit: private_bus.StallingPolkit, reliability):
    """Found: checks had no limit, timeout or cancellation, and all waited on phyllod's
    one connection (128 pending calls on Debian's system bus): a caller that never
    answers its own agent could fill them, and every later change failed for everyone.
    Now nobody holds at most ``per_caller`` per connection and ``per_user`` in all;
    the excess gets Busy at once, before polkit is asked; root and other users still
    steer phyllod (root's checks count against no limit); and every held check is
    cancelled when its caller leaves."""
    phyllod.start()
    assert phyllod.proc is not None
    connections, calls = 6, 6
    env = {k: v for k, v in child_env().items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}
    holder = subprocess.Popen(
        [*private_bus.AS_NOBODY, sys.executable, str(HERE), phyllod.bus.address,
         "--connections", str(connections), "--calls", str(calls)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
    try:
        assert holder.stdin is not None and holder.stdout is not None
        first = json.loads(holder.stdout.readline())
        held = LIMITS.per_user  # 6 connections of 4 (per_caller): more than the user's 16
        assert first == {"replies": {BUSY: connections * calls - held}, "waiting": held}
        checks = poll(lambda: len(stalling_polkit.events("check")) == held and
                      stalling_polkit.events("check"))
        assert checks and {c["uid"] for c in checks} == {private_bus.NOBODY}
        # The checks name the device and the guest, for the prompt and for rules.
        assert {c["details"]["device"] for c in checks} == {"usb:1-2"}
        assert {c["details"]["guest"] for c in checks} == {"test", ""}
        assert {c["action"] for c in checks} == {POLKIT_ATTACH, POLKIT_DETACH}
        _stats(phyllod, f"polkit: {held} checks waiting")

        # Root steers phyllod all the same: its checks count against no limit.
        assert phyllod.call("Detach", "s", "usb:1-2").returncode == 0
        assert phyllod.call("Reload").returncode == 0
        # Another user's checks reach polkit: one user's flood leaves room for others.
        r = _as_user(OTHER_USER, ["busctl", f"--address={phyllod.bus.address}", "call", NAME,
                                  ROOT, MANAGER, "ClearOverride", "s", "usb:1-2"])
        assert r.returncode == 0, r.stderr
        assert [c["uid"] for c in stalling_polkit.events("check")][held:] == [0, 0, OTHER_USER]
        assert phyllod.prop(f"{ROOT}/devices/usb_1_2", "Override") == ""

        # nobody leaves the bus: phyllod cancels each of its checks with polkit.
        holder.stdin.write("leave\n")
        holder.stdin.flush()
        assert json.loads(holder.stdout.readline()) == {"left": True}
        cancels = poll(lambda: len(stalling_polkit.events("cancel")) == held and
                       stalling_polkit.events("cancel"))
        assert cancels, stalling_polkit.events()
        assert {c["id"] for c in cancels} == {c["id"] for c in checks}
        assert cancels[-1]["held"] == 0
        line = _stats(phyllod, f"polkit: 0 checks waiting, {held + 3} asked, 2 root")
        assert f"{held} callers left" in line and f"{connections * calls - held} busy" in line
    finally:
        holder.kill()
        holder.wait()
    assert phyllod.proc.alive
    log = phyllod.proc.log()
    assert "Traceback" not in log, log[-3000:]
    reliability.record("authorization checks that never finish",
                       calls_from_nobody=connections * calls, held=held,
                       refused_busy=connections * calls - held, cancelled_on_leaving=held,
                       root_and_other_user="served while held", daemon_alive="yes")


# ------------------------------------------------------------ phyllod's bus service here


class FakeOperations:
    """What the bus asks of the daemon, recorded; Explain answers 100,000 characters."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def explain(self, device_id: str) -> str:
        return f"{device_id}: " + "why " * 25_000

    def iommu_groups(self) -> list:
        row = ("0000:00:02.0", "8086:1234", "030000", "i915", "ok", "r" * 100_000)
        return [(2**40, [row]), (7, [row])]

    async def set_override(self, device_id: str, override: object) -> None:
        self.calls.append(("override", device_id, override))

    def reload_policy(self) -> None:
        self.calls.append(("reload",))

    async def answer(self, number: int, guest: str, remember: bool) -> None:
        self.calls.append(("answer", number, guest, remember))

    async def forget(self, identity: str) -> None:
        self.calls.append(("forget", identity))


def _usb(port: str, busnum: int = 1, devnum: int = 5) -> Device:
    return Device(subsystem=Subsystem.USB, sys_path=f"/sys/bus/usb/devices/{port}", port=port,
                  busnum=busnum,
                  devnum=devnum, vendor="0627", product="0001", product_name="Keyboard")


def _snapshot(*devices: Device) -> Snapshot:
    by_id = {d.id: d for d in devices}
    guests = {"test": Guest(name="test", uuid="6695eb01-f6a4-8304-79aa-97f2502e193f",
                            state=GuestState.RUNNING)}
    return Snapshot(devices=by_id, guests=guests, overrides={}, version="0-test",
                    assignments={i: Assignment(device_id=i, state=State.HOST,
                                               reason="stays") for i in by_id},
                    iommu_enabled=False, policy_errors=(), policy_files=(),
                    libvirt_uri="test:///default", remembered={}, requests={}, ask_timeout=30)


async def _busctl(bus: private_bus.PrivateSystemBus, *args: str, nobody: bool = False
                  ) -> subprocess.CompletedProcess[str]:
    """busctl off the loop that serves phyllod's bus service."""
    argv = ["busctl", f"--address={bus.address}", "--timeout=30", *args]
    if nobody:
        return await asyncio.to_thread(private_bus.run_as_nobody, argv, bus.env())
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                   timeout=60, check=False)


async def _service(bus: private_bus.PrivateSystemBus, snapshot: Snapshot,
                   limits: polkit.Limits = LIMITS) -> tuple[BusService, FakeOperations]:
    ops = FakeOperations()
    service = BusService(bus.address, ops, lambda: None, polkit.Authority(limits))
    await service.connect(snapshot)
    return service, ops


async def test_a_check_polkit_never_answers_times_out_and_is_cancelled(
        system_bus: private_bus.PrivateSystemBus,
        stalling_polkit: private_bus.StallingPolkit):
    service, ops = await _service(system_bus, _snapshot(_usb("1-2")),
                                  polkit.Limits(timeout=1.0, interactive_timeout=2.0))
    try:
        # busctl allows interactive authorization unless told not to.
        for flag, seconds in (("yes", 2), ("no", 1)):
            r = await _busctl(system_bus, f"--allow-interactive-authorization={flag}", "call",
                              NAME, ROOT, MANAGER, "Detach", "s", "usb:1-2", nobody=True)
            assert r.returncode != 0
            assert ("not authorized for me.phyllo.phyllod.detach: no answer from polkit "
                    f"within {seconds} s; nothing was done") in r.stderr
        checks = stalling_polkit.events("check")
        assert len(checks) == 2
        assert poll(lambda: len(stalling_polkit.events("cancel")) == 2)
        assert [c["id"] for c in stalling_polkit.events("cancel")] == [c["id"] for c in checks]
        assert ops.calls == []
        assert service.authority is not None and service.authority.in_flight == 0
        assert service.authority.stats.timed_out == 2
    finally:
        service.close()


async def test_one_value_out_of_range_hides_only_its_object(
        system_bus: private_bus.PrivateSystemBus, caplog: pytest.LogCaptureFixture):
    """Found: one device number past D-Bus ``u`` made every publish and every
    GetManagedObjects fail while the device was present. It is now left out, logged once."""
    good, bad = _usb("1-2"), _usb("1-3", busnum=2**40)
    service, _ = await _service(system_bus, _snapshot(good, bad))
    try:
        r = await _busctl(system_bus, "--json=short", "call", NAME, ROOT,
                          "org.freedesktop.DBus.ObjectManager", "GetManagedObjects",
                          nobody=True)
        assert r.returncode == 0, r.stderr
        (objects,) = json.loads(r.stdout)["data"]
        assert device_path(good.id) in objects and device_path(bad.id) not in objects
        r = await _busctl(system_bus, "get-property", NAME, device_path(good.id),
                          "me.phyllo.Phyllod1.Device", "Bus")
        assert r.stdout.strip() == "u 1", r.stderr
        service.publish(_snapshot(good, bad, _usb("1-4")))
        r = await _busctl(system_bus, "get-property", NAME, device_path("usb:1-4"),
                          "me.phyllo.Phyllod1.Device", "Id")
        assert r.stdout.strip() == 's "usb:1-4"', r.stderr
        # The same for an IOMMU group number past u: its group alone is left out.
        r = await _busctl(system_bus, "--json=short", "call", NAME, ROOT, MANAGER,
                          "GetIommuGroups", nobody=True)
        assert r.returncode == 0, r.stderr
        (groups,) = json.loads(r.stdout)["data"]
        assert [g[0] for g in groups] == [7] and len(groups[0][1][0][5]) <= 4096
        unfit = [rec for rec in caplog.records if "is not shown on the bus" in rec.message]
        assert len(unfit) == 2 and "Bus (1099511627776) does not fit D-Bus type u" in \
            unfit[0].message
        assert "IOMMU group 1099511627776 is not shown" in unfit[1].message
        # Left out once: the second publish did not change it, so it was not looked at again.
        assert service.stats.skipped == 1
        # The device comes back as soon as its values fit.
        service.publish(_snapshot(good, _usb("1-3")))
        r = await _busctl(system_bus, "get-property", NAME, device_path("usb:1-3"),
                          "me.phyllo.Phyllod1.Device", "Bus")
        assert r.stdout.strip() == "u 1", r.stderr
    finally:
        service.close()


async def test_each_object_is_marshalled_once_per_change_and_texts_are_bounded(
        system_bus: private_bus.PrivateSystemBus):
    """Found: dbus-fast built GetManagedObjects' answer (every property of every
    object) for each call, so anyone's flood of them slowed everyone's answers."""
    service, _ = await _service(system_bus, _snapshot(_usb("1-2"), _usb("1-3")))
    client = await MessageBus(bus_address=system_bus.address).connect()
    try:
        async def objects(path: str = ROOT) -> dict:
            reply = await client.call(Message(
                destination=NAME, path=path, interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects"))
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
            return reply.body[0]

        first = await objects()
        for _ in range(49):
            assert await objects() == first
        assert set(first) == {device_path("usb:1-2"), device_path("usb:1-3"),
                              f"{ROOT}/guests/6695eb01_f6a4_8304_79aa_97f2502e193f"}
        # Each object marshalled once (two devices, the guest, the root), for 50 answers.
        marshalled = service.tree.objects.marshalled
        assert (marshalled, service.stats.objects_served) == (4, 50)
        everything = await objects("/")
        assert set(everything) == set(first) | {ROOT}
        service.publish(_snapshot(_usb("1-2")))
        assert set(await objects()) == set(first) - {device_path("usb:1-3")}
        assert service.tree.objects.marshalled == marshalled  # one went: nothing to marshal
        # Pipelined, one caller's calls wait in turn, 8 at most; the rest are refused.
        replies = await asyncio.gather(*(client.call(Message(
            destination=NAME, path=ROOT, interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects")) for _ in range(40)))
        names = [r.error_name or "return" for r in replies]
        assert set(names) <= {"return", "org.freedesktop.DBus.Error.LimitsExceeded"}, names
        assert names.count("return") >= 8 and service.tree.objects.marshalled == marshalled
        assert service.stats.reads_refused == names.count(
            "org.freedesktop.DBus.Error.LimitsExceeded")
        # Explain's answer is bounded (64 KiB) whatever the daemon writes.
        reply = await client.call(Message(destination=NAME, path=ROOT, interface=MANAGER,
                                          member="Explain", signature="s", body=["usb:1-2"]))
        assert reply is not None and 65000 < len(reply.body[0]) <= 65536
        assert reply.body[0].endswith("more characters not shown; the journal has them)")
    finally:
        client.disconnect()
        service.close()


@pytest.mark.parametrize(("meanwhile", "outcome"), [
    ("unplugged", "usb:1-2 (0627:0001 Keyboard) was unplugged while authorization was "
                  "pending; nothing was done"),
    ("replaced", "usb:1-2 (0627:0001 Keyboard) was replaced by usb:1-2 (1050:0407 YubiKey) "
                 "while authorization was pending; nothing was done"),
    ("replugged", ""),  # the same device enumerated again: it is the one authorized
])
async def test_the_device_is_checked_again_after_a_long_authorization(
        system_bus: private_bus.PrivateSystemBus,
        stalling_polkit: private_bus.StallingPolkit, meanwhile: str, outcome: str):
    keyboard = _usb("1-2")
    service, ops = await _service(system_bus, _snapshot(keyboard))
    try:
        call = asyncio.ensure_future(_busctl(system_bus, "call", NAME, ROOT, MANAGER, "Attach",
                                             "ss", "usb:1-2", "test", nobody=True))
        checks = await asyncio.to_thread(poll, lambda: stalling_polkit.events("check"))
        assert checks, stalling_polkit.log()
        assert checks[0]["details"]["device_description"] == "usb:1-2 (0627:0001 Keyboard)"
        if meanwhile == "unplugged":
            service.publish(_snapshot())
        elif meanwhile == "replaced":
            service.publish(_snapshot(Device(subsystem=Subsystem.USB, sys_path=keyboard.sys_path,
                                             port="1-2",
                                             busnum=1, devnum=6, vendor="1050",
                                             product="0407", product_name="YubiKey")))
        else:
            service.publish(_snapshot(_usb("1-2", devnum=7)))
        await asyncio.to_thread(stalling_polkit.release, checks[0]["id"], True)
        r = await call
        if outcome:
            assert r.returncode != 0 and outcome in r.stderr, r.stderr
            assert ops.calls == []
        else:
            assert r.returncode == 0, r.stderr
            assert [c[:2] for c in ops.calls] == [("override", "usb:1-2")]
    finally:
        service.close()
