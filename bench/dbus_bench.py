"""D-Bus benchmark: phyllod's method round trip and GetManagedObjects with 500 devices.

Why: phyllodctl, desktop widgets and scripts see phyllod only through the bus,
so what a call costs there, at a busy host's scale, is what users feel.

Baseline. The issue asks for busctl calling a trivial systemd method in the
same run. This benchmark must run where there is no systemd and no system bus,
so the baseline is the bus daemon's own trivial method instead, served by C
code in dbus-daemon: ``org.freedesktop.DBus.GetId`` on ``org.freedesktop.DBus``.
It is one hop shorter than any call to phyllod (the bus answers it itself, a
call to phyllod is forwarded to phyllod and back), so phyllod's ``Peer.Ping``
(answered by dbus-fast without reaching phyllod's code) is the floor of what
any phyllod call can cost. On a systemd host, ``--systemd-baseline`` adds
``busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1
org.freedesktop.DBus.Peer Ping`` on the real system bus as an extra row.

Set-up: a private dbus-daemon configured like the system bus with the shipped
policy (tests/integration/support/private_bus.py), N umockdev USB devices (coldplug:
all plugged before the daemon starts), the daemon as a subprocess on libvirt's
test driver with an empty policy, waited for through a fake NOTIFY_SOCKET.
A second daemon with 50 devices on a second bus shows how GetManagedObjects
scales (``--scale-devices 0`` leaves it out).

Measurements are interleaved round by round, in a new random order each round,
so noise and after-effects (a call right after a large reply) hit every row
alike; medians and p90 are printed with the ratio to the baseline's median.
busctl rows include busctl's process spawn, which is how people and scripts
use it; in-process rows are one dbus-fast aio client, round trip only (for
GetManagedObjects that includes the client unmarshalling the reply). The
bench process runs under umockdev's preload (needed for the testbed); busctl
children run without it, the in-process client with it, for baseline and
phyllod alike. The daemon logs at INFO to a pipe, as under systemd.

Flood (``--flood-clients N``, default 4): N processes running as nobody each
keep 16 calls in flight for ``--flood-seconds``: three in four GetManagedObjects,
one in four Explain with a 1 MiB argument (what issue 16 found pushed root's
answers to seconds). Meanwhile root's Manager.Explain round trip is measured,
one call at a time; its median under flood is the figure to keep under 100 ms.
The flooders' own counts (calls answered, by reply) are printed beside it.

A report, not a test (root needed, as for the integration tests):
``umockdev-wrapper .venv/bin/python bench/dbus_bench.py [--devices N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "support"))

import private_bus  # noqa: E402
import testbed  # noqa: E402
from daemon_process import DaemonProcess, NotifySocket, child_env  # noqa: E402
from dbus_fast import Message, MessageType, Variant  # noqa: E402
from dbus_fast.aio import MessageBus  # noqa: E402

NAME = "me.phyllo.Phyllod1"
OBJ = "/me/phyllo/Phyllod1"
MANAGER = "me.phyllo.Phyllod1.Manager"
DEVICE = "me.phyllo.Phyllod1.Device"
FIRST = "usb:1-1"
FIRST_PATH = f"{OBJ}/devices/usb_1_1"
PER_BUS = 100  # devices per USB bus: ports b-1 … b-100, device numbers 2 … 101
SYSTEMD_PING = ("call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                "org.freedesktop.DBus.Peer", "Ping")


@dataclass
class Daemon:
    """One phyllod on its own private bus, with its own testbed."""

    devices: int
    bus: private_bus.PrivateSystemBus
    testbed: testbed.UsbTestbed  # held: the testbed's directory goes with the object
    proc: DaemonProcess
    ready_s: float

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def start_daemon(stack: ExitStack, devices: int, work: Path, tree: Path = ROOT) -> Daemon:
    """Bus, testbed with ``devices`` plugged, then phyllod (the code of ``tree``); all
    stopped by ``stack``."""
    bus = private_bus.PrivateSystemBus()
    stack.callback(bus.stop)
    bus.start()
    tb = testbed.UsbTestbed()
    for i in range(devices):
        tb.plug(f"{1 + i // PER_BUS}-{1 + i % PER_BUS}", devnum=2 + i % PER_BUS,
                serial=f"BENCH{i:04d}")
    (work / "policy.d").mkdir()
    notify = NotifySocket(work / "notify")
    stack.callback(notify.close)
    t0 = time.perf_counter()
    proc = DaemonProcess(
        ["--bus", bus.address, "--connect", "test:///default",
         "--policy-dir", str(work / "policy.d"), "--state-dir", str(work / "state")],
        child_env(**tb.env, NOTIFY_SOCKET=str(notify.path)), tree=tree)
    stack.callback(proc.stop)
    try:
        notify.wait_for("READY=1", timeout=300)
    except AssertionError:
        print(proc.log()[-4000:], file=sys.stderr)
        raise
    return Daemon(devices, bus, tb, proc, time.perf_counter() - t0)


def spread(samples: Sequence[float]) -> tuple[float, float]:
    """Median and 90th percentile."""
    return statistics.median(samples), statistics.quantiles(samples, n=10)[-1]


# --- busctl, spawn included -------------------------------------------------------------

def busctl_cases(d: Daemon, systemd: bool) -> dict[str, list[str]]:
    a = f"--address={d.bus.address}"
    cases = {
        "busctl: bus GetId (baseline)": ["busctl", a, "call", "org.freedesktop.DBus",
                                         "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                         "GetId"],
        "busctl: phyllod Manager.Explain": ["busctl", a, "call", NAME, OBJ, MANAGER,
                                            "Explain", "s", FIRST],
        "busctl: phyllod get-property State": ["busctl", a, "get-property", NAME, FIRST_PATH,
                                               DEVICE, "State"],
    }
    if systemd:
        cases["busctl: systemd1 Peer.Ping (system bus)"] = ["busctl", *SYSTEMD_PING]
    return cases


def run_busctl(argv: list[str]) -> float:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no umockdev preload
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return elapsed


def bench_busctl(cases: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    names = list(cases)
    for name in names:  # warm-up, and a clear error if a call cannot work at all
        run_busctl(cases[name])
    out: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(1)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            out[name].append(run_busctl(cases[name]))
    return out


# --- in process, dbus-fast --------------------------------------------------------------

def calls(n: int) -> dict[str, Callable[[], Message]]:
    """Message factories (a message is sent once: it gets its serial then)."""
    return {
        "in-process: bus GetId (baseline)": lambda: Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetId"),
        "in-process: phyllod Peer.Ping": lambda: Message(
            destination=NAME, path=OBJ, interface="org.freedesktop.DBus.Peer", member="Ping"),
        "in-process: phyllod Manager.Explain": lambda: Message(
            destination=NAME, path=OBJ, interface=MANAGER, member="Explain",
            signature="s", body=[FIRST]),
        "in-process: phyllod Properties.Get State": lambda: Message(
            destination=NAME, path=FIRST_PATH, interface="org.freedesktop.DBus.Properties",
            member="Get", signature="ss", body=[DEVICE, "State"]),
        f"in-process: phyllod GetManagedObjects, {n} devices": lambda: Message(
            destination=NAME, path=OBJ, interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects"),
    }


async def call(bus: MessageBus, msg: Message) -> Message:
    reply = await bus.call(msg)
    if reply.message_type == MessageType.ERROR:
        raise RuntimeError(f"{msg.interface}.{msg.member}: {reply.error_name} {reply.body}")
    return reply


CHANGED = "usb:1-2"  # the device whose Override each "after a change" round flips


def changes(bus: MessageBus) -> Callable[[], Awaitable[None]]:
    """A change of one device (its Override, by Detach then ClearOverride), published
    before the call returns: what each GetManagedObjects after a change follows."""
    flips = [("Detach", "s", [CHANGED]), ("ClearOverride", "s", [CHANGED])]
    turn = 0

    async def change() -> None:
        nonlocal turn
        member, signature, body = flips[turn % 2]
        turn += 1
        await call(bus, Message(destination=NAME, path=OBJ, interface=MANAGER, member=member,
                                signature=signature, body=body))
    return change


async def bench_inprocess(main: Daemon, scale: Daemon | None, rounds: int
                          ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Round trips, interleaved; also the GetManagedObjects reply sizes (bytes, marshalled).

    The row "after one device changed" times a GetManagedObjects that follows,
    untimed, a change of one device: the answer for that state is not made yet.
    """
    targets: list[tuple[str, MessageBus, Callable[[], Message]]] = []
    before: dict[str, Callable[[], Awaitable[None]]] = {}
    buses: list[MessageBus] = []
    try:
        bus = await MessageBus(bus_address=main.bus.address).connect()
        buses.append(bus)
        targets += [(name, bus, make) for name, make in calls(main.devices).items()]
        after_change = "in-process: phyllod GetManagedObjects after a change"
        targets.append((after_change, bus, targets[-1][2]))
        before[after_change] = changes(bus)
        if scale is not None:
            small = await MessageBus(bus_address=scale.bus.address).connect()
            buses.append(small)
            name, make = list(calls(scale.devices).items())[-1]
            targets.append((name, small, make))
        sizes: dict[str, int] = {}
        for name, b, make in targets:  # warm-up; checks every call works
            for _ in range(5):
                reply = await call(b, make())
            if "GetManagedObjects" in name:
                objects = reply.body[0]
                devices = [p for p in objects if p.startswith(f"{OBJ}/devices/")]
                want = main.devices if b is bus else scale.devices if scale else 0
                if len(devices) != want:
                    raise RuntimeError(f"{name}: {len(devices)} device objects, not {want}")
                sizes[name] = len(reply._marshall(False))
        out: dict[str, list[float]] = {name: [] for name, _, _ in targets}
        rng = random.Random(1)
        for _ in range(rounds):
            rng.shuffle(targets)
            for name, b, make in targets:
                if name in before:
                    await before[name]()
                msg = make()
                t0 = time.perf_counter()
                await call(b, msg)
                out[name].append(time.perf_counter() - t0)
        return out, sizes
    finally:
        for b in buses:
            b.disconnect()


# --- a raw socket: the bus and phyllod, no client unmarshalling ------------------------

class RawClient:
    """A D-Bus connection that sends marshalled calls and reads the replies' bytes
    without unmarshalling them: what the bus and phyllod cost, with no client's
    parsing in it (the floor any client adds its unmarshalling to)."""

    def __init__(self, address: str) -> None:
        path = dict(kv.split("=", 1) for kv in address.split(":", 1)[1].split(","))["path"]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode()
                          + b"\r\n")
        if not self.sock.recv(4096).startswith(b"OK "):
            raise RuntimeError("raw client: EXTERNAL authentication refused")
        self.sock.sendall(b"BEGIN\r\n")
        self.serial = 0
        self.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                          interface="org.freedesktop.DBus", member="Hello"))

    def _exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise RuntimeError("raw client: the bus closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def call(self, msg: Message) -> int:
        """Send ``msg``; read messages until a reply or an error; its size in bytes."""
        self.serial += 1
        msg.serial = self.serial
        self.sock.sendall(msg._marshall(False))
        while True:
            head = self._exactly(16)
            body, fields = (int.from_bytes(head[i:i + 4], "little") for i in (4, 12))
            rest = self._exactly(-(16 + fields) % 8 + fields + body)
            if head[1] == MessageType.ERROR.value:
                raise RuntimeError(f"raw client: {msg.member} failed")
            if head[1] == MessageType.METHOD_RETURN.value:  # signals (NameAcquired) skipped
                return 16 + len(rest)

    def close(self) -> None:
        self.sock.close()


def bench_raw(main: Daemon, rounds: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """GetId and GetManagedObjects over a raw socket, interleaved; reply sizes."""
    client = RawClient(main.bus.address)
    gmo = f"raw socket: phyllod GetManagedObjects, {main.devices} devices"
    cases = {"raw socket: bus GetId (baseline)": calls(main.devices)[
        "in-process: bus GetId (baseline)"],
        gmo: calls(main.devices)[f"in-process: phyllod GetManagedObjects, {main.devices} "
                                 "devices"]}
    try:
        sizes = {name: client.call(make()) for name, make in cases.items()}  # warm-up
        out: dict[str, list[float]] = {name: [] for name in cases}
        names, rng = list(cases), random.Random(3)
        for _ in range(rounds):
            rng.shuffle(names)
            for name in names:
                msg = cases[name]()
                t0 = time.perf_counter()
                client.call(msg)
                out[name].append(time.perf_counter() - t0)
        return out, sizes
    finally:
        client.close()


# --- in process, GLib's GDBus (C) -------------------------------------------------------

def bench_gio(main: Daemon, rounds: int) -> dict[str, list[float]]:
    """GetManagedObjects as a C client gets it: GLib's GDBus (what GNOME's applets and
    Gio.DBusObjectManagerClient use), which parses the reply into a GVariant in C.

    Beside the dbus-fast rows it splits the cost: what the bus and phyllod take
    (this row) from what dbus-fast's Python unmarshalling adds on the client's
    side. Synchronous calls on one connection, interleaved with the bus's GetId.
    """
    from gi.repository import Gio, GLib  # PyGObject: the test tier's umockdev binding

    flags = (Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
             | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION)
    conn = Gio.DBusConnection.new_for_address_sync(main.bus.address, flags, None, None)
    gmo = f"GLib GDBus (C): phyllod GetManagedObjects, {main.devices} devices"
    cases = {
        "GLib GDBus (C): bus GetId (baseline)": ("org.freedesktop.DBus",
                                                 "/org/freedesktop/DBus",
                                                 "org.freedesktop.DBus", "GetId"),
        gmo: (NAME, OBJ, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"),
    }

    def one(name: str) -> float:
        t0 = time.perf_counter()
        reply = conn.call_sync(*cases[name], None, None, Gio.DBusCallFlags.NONE, 30_000, None)
        elapsed = time.perf_counter() - t0
        if name == gmo:  # every object arrived (counted outside the timing)
            objects = reply.get_child_value(0)
            paths = [objects.get_child_value(i).get_child_value(0).get_string()
                     for i in range(objects.n_children())]
            devices = sum(p.startswith(f"{OBJ}/devices/") for p in paths)
            if devices != main.devices:
                raise RuntimeError(f"{name}: {devices} device objects, not {main.devices}")
        return elapsed

    try:
        for name in cases:  # warm-up
            one(name)
        out: dict[str, list[float]] = {name: [] for name in cases}
        names, rng = list(cases), random.Random(2)
        for _ in range(rounds):
            rng.shuffle(names)
            for name in names:
                out[name].append(one(name))
        return out
    finally:
        with contextlib.suppress(GLib.Error):
            conn.close_sync(None)


async def state_of_first(d: Daemon) -> str:
    bus = await MessageBus(bus_address=d.bus.address).connect()
    try:
        reply = await call(bus, calls(d.devices)["in-process: phyllod Properties.Get State"]())
        value = reply.body[0]
        return value.value if isinstance(value, Variant) else str(value)
    finally:
        bus.disconnect()


# --- flood from nobody -------------------------------------------------------------------

FLOOD_WINDOW = 16
FLOOD_ARGUMENT = "x" * (1 << 20)


async def flood_client(address: str, seconds: float) -> dict[str, int]:
    """One flooder (run as nobody): FLOOD_WINDOW calls in flight until ``seconds`` pass."""
    from phyllod.bus.service import _SendSocket

    bus = await MessageBus(bus_address=address).connect()
    # 1 MiB calls fill the send buffer at once: the same writer fix as phyllod's own.
    bus._writer.sock = _SendSocket(bus._writer.sock)
    counts: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    n = 0

    async def worker() -> None:
        nonlocal n
        while time.monotonic() < deadline:
            n += 1
            msg = (Message(destination=NAME, path=OBJ, interface=MANAGER, member="Explain",
                           signature="s", body=[FLOOD_ARGUMENT]) if n % 4 == 0 else
                   Message(destination=NAME, path=OBJ,
                           interface="org.freedesktop.DBus.ObjectManager",
                           member="GetManagedObjects"))
            try:
                reply = await bus.call(msg)
            except Exception as e:  # the connection went away
                counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
                return
            key = f"{msg.member} {reply.error_name or 'return'}"
            counts[key] = counts.get(key, 0) + 1

    await asyncio.gather(*(worker() for _ in range(FLOOD_WINDOW)))
    bus.disconnect()
    return counts


def start_flood(d: Daemon, clients: int, seconds: float) -> list[subprocess.Popen[str]]:
    env = {k: v for k, v in child_env().items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}
    return [subprocess.Popen([*private_bus.AS_NOBODY, sys.executable, str(Path(__file__)),
                              "--flood-client", d.bus.address, "--flood-seconds", str(seconds)],
                             stdout=subprocess.PIPE, text=True, env=env, cwd="/")
            for _ in range(clients)]


async def root_under_flood(d: Daemon, rounds: int, seconds: float) -> list[float]:
    """Root's Explain round trips, one at a time, spread over the flood's ``seconds``."""
    bus = await MessageBus(bus_address=d.bus.address).connect()
    samples: list[float] = []
    try:
        await asyncio.sleep(1.0)  # the flood is under way
        started = time.monotonic()
        while len(samples) < rounds and time.monotonic() - started < seconds - 2:
            msg = calls(d.devices)["in-process: phyllod Manager.Explain"]()
            t0 = time.perf_counter()
            await call(bus, msg)
            samples.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)
    finally:
        bus.disconnect()
    return samples


def flood(d: Daemon, clients: int, seconds: float, rounds: int) -> dict:
    procs = start_flood(d, clients, seconds)
    try:
        samples = asyncio.run(root_under_flood(d, rounds, seconds))
        totals: dict[str, int] = {}
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 120)
            last = out.strip().splitlines()[-1] if out.strip() else "{}"
            for k, v in json.loads(last).items():
                totals[k] = totals.get(k, 0) + v
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    print(f"\nflood: {clients} clients as nobody, {FLOOD_WINDOW} calls in flight each, "
          f"{seconds:.0f} s (3/4 GetManagedObjects, 1/4 Explain with a 1 MiB argument)")
    print("  flooders' replies: " + ", ".join(f"{k}: {v}" for k, v in sorted(totals.items())))
    found = {"clients": clients, "seconds": seconds, "replies": totals,
             "root_explain_s": samples}
    if len(samples) < 3:
        print(f"  root: only {len(samples)} answers during the flood")
        return found
    med, p90 = spread(samples)
    print(f"  root Manager.Explain under flood: median {med * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} "
          f"ms, mean {statistics.mean(samples) * 1e3:.1f} ms, max {max(samples) * 1e3:.1f} ms, "
          f"{len(samples)} calls; daemon alive: {d.proc.alive}")
    return found


# --- report -----------------------------------------------------------------------------

def table(title: str, results: dict[str, list[float]], baseline: str,
          sizes: dict[str, int] | None = None) -> None:
    """Median and p90 in ms, ratio of medians to the baseline's; reply sizes if given."""
    base = statistics.median(results[baseline])
    print(f"\n{title}")
    head, rule = f"| {'call':<55} | median ms | p90 ms | vs baseline |", "|---|---:|---:|---:|"
    print(head + (" reply bytes |" if sizes is not None else ""))
    print(rule + ("---:|" if sizes is not None else ""))
    for name, samples in results.items():
        med, p90 = spread(samples)
        row = f"| {name:<55} | {med * 1e3:9.3f} | {p90 * 1e3:6.3f} | {med / base:10.2f}x |"
        if sizes is not None:
            row += f" {sizes[name]:>11,} |" if name in sizes else f" {'':>11} |"
        print(row)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500, help="USB devices (default 500)")
    parser.add_argument("--rounds", type=int, default=200,
                        help="in-process repetitions of each call (default 200)")
    parser.add_argument("--busctl-rounds", type=int, default=50,
                        help="busctl repetitions of each call (default 50)")
    parser.add_argument("--scale-devices", type=int, default=50,
                        help="a second daemon with this many devices for GetManagedObjects "
                             "scaling; 0: none (default 50)")
    parser.add_argument("--systemd-baseline", action="store_true",
                        help="also busctl-call systemd's Peer.Ping on the real system bus")
    parser.add_argument("--flood-clients", type=int, default=4,
                        help="processes flooding as nobody; 0: no flood case (default 4)")
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="run the daemon from this source tree (another branch's "
                             "worktree, for a before/after); default: this checkout")
    parser.add_argument("--flood-client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write every sample here (seconds), for "
                        "bench/performance.py")
    args = parser.parse_args()
    if args.flood_client:  # one flooder, run by start_flood as nobody
        print(json.dumps(asyncio.run(flood_client(args.flood_client, args.flood_seconds))))
        return 0
    why = testbed.available() or private_bus.available()
    if why:
        print(f"dbus bench cannot run: {why}", file=sys.stderr)
        return 1
    if args.devices < 1 or args.devices > 127 * PER_BUS:
        parser.error(f"--devices must be 1 … {127 * PER_BUS}")
    if args.systemd_baseline:
        try:
            run_busctl(["busctl", *SYSTEMD_PING])
        except (RuntimeError, OSError) as e:
            print(f"--systemd-baseline: {e}", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, _interrupt)

    with tempfile.TemporaryDirectory(prefix="phyllod-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        (work / "main").mkdir()
        main_d = start_daemon(stack, args.devices, work / "main", args.tree.resolve())
        rss_setup = main_d.rss_kib()
        scale_d = None
        if 0 < args.scale_devices != args.devices:
            (work / "scale").mkdir()
            scale_d = start_daemon(stack, args.scale_devices, work / "scale", args.tree.resolve())
        first_state = asyncio.run(state_of_first(main_d))

        print(f"phyllod D-Bus benchmark, daemon from {args.tree.resolve()} (private bus "
              "configured like the system bus, shipped policy; libvirt test:///default, "
              "empty policy)")
        print("baseline: org.freedesktop.DBus.GetId, answered by dbus-daemon itself "
              "(no systemd here);")
        print("  phyllod calls take one more hop (bus → phyllod → bus); phyllod Peer.Ping is "
              "answered by dbus-fast, the floor for any phyllod call")
        print(f"\nset-up: {args.devices} umockdev USB devices plugged before start "
              f"(coldplug), {FIRST} is '{first_state}'")
        print(f"  spawn → READY=1 with {args.devices} devices: {main_d.ready_s:6.2f} s;"
              f" daemon VmRSS after set-up: {rss_setup / 1024:.1f} MiB")
        if scale_d is not None:
            print(f"  spawn → READY=1 with {scale_d.devices} devices: {scale_d.ready_s:6.2f} s;"
                  f" daemon VmRSS: {scale_d.rss_kib() / 1024:.1f} MiB (second bus, for "
                  f"scaling)")
        sys.stdout.flush()

        results, sizes = asyncio.run(bench_inprocess(main_d, scale_d, args.rounds))
        table(f"in-process, dbus-fast aio client, round trip, {args.rounds} rounds interleaved",
              results, "in-process: bus GetId (baseline)", sizes)
        sys.stdout.flush()

        raw, raw_sizes = bench_raw(main_d, args.rounds)
        table(f"raw socket (reply bytes read, not unmarshalled), round trip, {args.rounds} "
              "rounds interleaved", raw, "raw socket: bus GetId (baseline)", raw_sizes)
        sys.stdout.flush()
        gio = bench_gio(main_d, args.rounds)
        table(f"in-process, GLib GDBus (C) client, round trip, {args.rounds} rounds "
              "interleaved", gio, "GLib GDBus (C): bus GetId (baseline)")
        sys.stdout.flush()

        cases = busctl_cases(main_d, args.systemd_baseline)
        busctl = bench_busctl(cases, args.busctl_rounds)
        table(f"busctl, process spawn included, {args.busctl_rounds} rounds interleaved",
              busctl, "busctl: bus GetId (baseline)")
        flooded = {}
        if args.flood_clients > 0:
            flooded = flood(main_d, args.flood_clients, args.flood_seconds, args.rounds)
            sys.stdout.flush()
        print(f"\ndaemon VmRSS after the benchmark: {main_d.rss_kib() / 1024:.1f} MiB")
        if args.json:
            args.json.write_text(json.dumps({
                "bench": "dbus", "devices": args.devices, "in_process_s": results,
                "reply_bytes": sizes, "raw_s": raw, "gio_s": gio, "busctl_s": busctl,
                "flood": flooded, "rss_kib_after": main_d.rss_kib()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
