"""Load: coldplug of hundreds of devices among fifty guests, udev churn without leaks,
and the two faults the load found on the bus (a burst of signals, the bus going away).

The real daemon on a private system bus, over umockdev devices and a custom
libvirt test driver file (fifty running guests; the driver refuses every
attach, so the attach rules give real work: calls, failures, backoff). The
figures are measured from outside (READY=1 on NOTIFY_SOCKET, /proc/PID) and
from the daemon's own SIGUSR1 line (tracemalloc when PYTHONTRACEMALLOC is
set). Bounds on time are sanity bounds, not performance claims; the claims
are that everything is there, nothing leaks and the state follows the events.
"""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_process import DaemonProcess, NotifySocket, child_env
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from load import GUESTS, POLICY, Churn, node_xml, plug_tree
from phyllod_on_bus import DEVICE, NAME, ROOT, Phyllod

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

REPO = Path(__file__).resolve().parents[2]

#: Sanity bound for READY=1 with the soak's 2000 devices; not a performance claim.
READY_WITHIN = 120.0

MEMORY = re.compile(r"memory: (?:traced (\d+) KiB \(peak (\d+) KiB\), )?rss ([\d.]+) MiB, "
                    r"(\d+) fds, (\d+) devices, (\d+) guests")


class LoadedPhyllod(Phyllod):
    """phyllod on the private bus with a chosen libvirt URI and environment."""

    def start_timed(self, uri: str, timeout: float = READY_WITHIN, **env: str) -> float:
        """Start; returns seconds from the process's start to READY=1."""
        notify = NotifySocket(self.tmp / f"notify-{len(self.logs)}")
        environment = child_env(**self.tb.env, NOTIFY_SOCKET=str(notify.path), **env)
        try:
            started = time.monotonic()
            self.proc = DaemonProcess(
                ["--bus", self.bus.address, "--connect", uri, "--policy-dir",
                 str(self.policy_dir), "--state-dir", str(self.state_dir)], environment)
            notify.wait_for("READY=1", timeout)
            return time.monotonic() - started
        finally:
            notify.close()

    @property
    def daemon(self) -> DaemonProcess:
        assert self.proc is not None
        return self.proc

    def memory(self) -> dict[str, float]:
        """SIGUSR1, and the figures of the line it logs."""
        mark = self.daemon.mark()
        self.daemon.signal(signal.SIGUSR1)
        m = self.daemon.wait_log(MEMORY.pattern, start=mark, timeout=30)
        traced, peak, rss, fds, devices, guests = m.groups()
        return {"traced_kib": float(traced or 0), "peak_kib": float(peak or 0),
                "rss_mib": float(rss), "fds": int(fds), "devices": int(devices),
                "guests": int(guests)}

    def proc_figures(self) -> tuple[float, int]:
        """RSS (MiB, VmRSS) and open fds, read from /proc/PID as an admin would."""
        pid = self.daemon.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
        return rss / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def _managed_objects(address: str, calls: int) -> tuple[dict[str, Any], list[float]]:
    bus = await MessageBus(bus_address=address).connect()
    try:
        times, body = [], {}
        for _ in range(calls):
            msg = Message(destination=NAME, path=ROOT, member="GetManagedObjects",
                          interface="org.freedesktop.DBus.ObjectManager")
            started = time.perf_counter()
            reply = await bus.call(msg)
            times.append(time.perf_counter() - started)
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
            body = reply.body[0]
        return body, times
    finally:
        bus.disconnect()


def managed_objects(p: Phyllod, calls: int = 1) -> tuple[dict[str, Any], list[float]]:
    """GetManagedObjects ``calls`` times over dbus-fast: the last answer, and each call's time."""
    return asyncio.run(_managed_objects(p.bus.address, calls))


def device_states(p: Phyllod) -> dict[str, str]:
    """Device id → State, as the bus shows them."""
    objects, _ = managed_objects(p)
    return {ifaces[DEVICE]["Id"].value: ifaces[DEVICE]["State"].value
            for ifaces in objects.values() if DEVICE in ifaces}


def wait_for_devices(p: Phyllod, expected: set[str], timeout: float = 60.0) -> dict[str, str]:
    """Wait until the bus shows exactly ``expected`` and none of them is on the move."""
    deadline = time.monotonic() + timeout
    while True:
        states = device_states(p)
        if set(states) == expected and not {"attaching", "detaching"} & set(states.values()):
            return states
        if time.monotonic() > deadline:
            missing, extra = sorted(expected - set(states)), sorted(set(states) - expected)
            raise AssertionError(f"bus shows {len(states)} devices, expected {len(expected)}; "
                                 f"missing {missing[:10]}, extra {extra[:10]}")
        time.sleep(0.2)


@pytest.fixture
def loaded(system_bus, usb_testbed, tmp_path: Path, request: pytest.FixtureRequest):
    p = LoadedPhyllod(system_bus, usb_testbed, tmp_path)
    yield p
    p.stop()
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else True
    if failed:
        print("--- daemon logs (last 200 lines) ---\n"
              + "\n---\n".join("\n".join(log.splitlines()[-200:]) for log in p.logs))


def test_coldplug_of_hundreds_of_devices_among_fifty_guests(loaded: LoadedPhyllod, tmp_path,
                                                             reliability):
    devices = reliability.size(500, 2000)
    node = tmp_path / "node.xml"
    node.write_text(node_xml(GUESTS))
    (loaded.policy_dir / "10-load.toml").write_text(POLICY)
    ids = plug_tree(loaded.tb, devices)

    ready = loaded.start_timed(f"test://{node}")
    rss, fds = loaded.proc_figures()
    d = loaded.daemon
    d.wait_log(rf"connected to test://{node}: {GUESTS} guests, {GUESTS} running")
    d.wait_log(rf"{len(ids)} USB and 0 PCI devices present at start")

    objects, times = managed_objects(loaded, 20)
    shown = {ifaces[DEVICE]["Id"].value: ifaces[DEVICE]
             for ifaces in objects.values() if DEVICE in ifaces}
    guests = [path for path in objects if path.startswith(f"{ROOT}/guests/")]
    assert set(shown) == ids, sorted(ids ^ set(shown))[:10]
    assert len(guests) == GUESTS
    # The policy did its work: each kind of rule decided some devices.
    states = {i: v["State"].value for i, v in shown.items()}
    assert states["usb:1-1.3"] == "denied"
    assert states["usb:1-1.7"] == "host"
    assert any(v["Rule"].value == "security keys follow g01" for v in shown.values())
    assert any(v["Rule"].value == "behind hub 2-3 to g07" for v in shown.values())
    d.wait_log(r"attach usb:\S+ to g01 failed")  # the test driver's refusal, backed off
    memory = loaded.memory()
    assert memory["devices"] == len(ids) and memory["guests"] == GUESTS
    assert d.alive and "Traceback" not in d.log()

    median_ms = statistics.median(times) * 1000
    reliability.record(
        "load: coldplug", devices=len(ids), guests=GUESTS, seconds_to_ready=round(ready, 2),
        get_managed_objects_ms=round(median_ms, 1), objects=len(objects),
        rss_mib=round(rss, 1), fds=fds)
    print(f"coldplug: {len(ids)} devices, {GUESTS} guests, READY after {ready:.2f}s, "
          f"GetManagedObjects median {median_ms:.1f} ms (max {max(times) * 1000:.1f}) for "
          f"{len(objects)} objects, rss {rss:.1f} MiB, {fds} fds; {memory}")


def test_udev_churn_leaks_no_memory_and_no_fds(loaded: LoadedPhyllod, tmp_path, reliability):
    events = reliability.size(10_000, 100_000)
    node = tmp_path / "node.xml"
    node.write_text(node_xml(GUESTS))
    policy = loaded.policy_dir / "10-load.toml"
    policy.write_text(POLICY + "\n[settings]\ndebounce = 0\n")
    static = plug_tree(loaded.tb, 50)
    churn = Churn(loaded.tb)

    # tracemalloc with one frame per trace: enough for the totals.
    loaded.start_timed(f"test://{node}", PYTHONTRACEMALLOC="1")
    d = loaded.daemon
    wait_for_devices(loaded, static | churn.present)
    churn.follow(d, ") plugged in (", ") unplugged")

    # Warm-up: every code path once (plug, unplug, ask, deny, failed attach,
    # reconcile, bus objects come and go), so caches and pools are full.
    warmup = max(400, events // 10)
    churn.toggle(warmup)
    wait_for_devices(loaded, static | churn.present)
    churn.fill()
    wait_for_devices(loaded, static | churn.present)
    before = loaded.memory()
    _, fds_before = loaded.proc_figures()

    # Two halves, each ending where the state must follow the last events
    # (exactly the devices the testbed has), then with every port taken again.
    started = time.monotonic()
    figures = []
    for half in (events // 2, events - events // 2):
        churn.toggle(half)
        wait_for_devices(loaded, static | churn.present, timeout=120)
        churn.fill()
        wait_for_devices(loaded, static | churn.present)
        figures.append(loaded.memory())
    settled = time.monotonic() - started
    middle, after = figures
    rss_after, fds_after = loaded.proc_figures()

    # Debounce at its default (1 s): flaps are one plug, vanish timers fire or are cancelled.
    policy.write_text(POLICY)
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"policy: 5 rules", start=mark)
    churn.follow(d, ") plugged in (", ") vanished; waiting", ") returned (bus")
    flaps = max(200, events // 20)
    churn.flap(flaps)
    d.wait_log(r"returned \(bus 9 device", start=mark)
    # Unplugs for good: believed once their window is over, not before.
    gone = sorted(churn.devnum)[::2]
    mark = d.mark()
    for port in gone:
        churn.unplug(port)
    wait_for_devices(loaded, static | churn.present, timeout=30)
    for port in gone:
        d.wait_log(rf"usb:{re.escape(port)} \(.*\) vanished; waiting 1.0s", start=mark)
        d.wait_log(rf"usb:{re.escape(port)} \(.*\) unplugged", start=mark)
    churn.fill()
    wait_for_devices(loaded, static | churn.present)
    debounced = loaded.memory()

    # Claims: alive, no traceback, fds back to the same count, the Python heap
    # flat. Each figure is taken in the same state (every port taken, the bus
    # settled), but between two loop callbacks, so what is in flight (attach
    # retries and their tasks, queued bus messages) comes and goes: up to
    # ~230 KiB measured. And once, some 1,000-2,000 events in, the
    # interpreter's table of interned strings grows (pathlib interns every
    # path part it parses: ~1 MB measured, net ~0.6 MB), a step, not a slope.
    # Hence two bounds:
    # - after the churn vs after the warm-up: 10 % + 256 KiB (the step fits);
    # - second half vs first half (past the step): 2 % + 256 KiB, ~550 KiB
    #   here, so a leak of ~110 bytes per event (over the 5,000 of a half)
    #   fails it, and of ~11 bytes in the soak's 50,000.
    assert d.alive and "Traceback" not in d.log()
    assert before["traced_kib"] > 0, "tracemalloc is not tracing in the daemon"
    deadline = time.monotonic() + 10
    while fds_after != fds_before and time.monotonic() < deadline:
        time.sleep(0.2)
        _, fds_after = loaded.proc_figures()
    assert fds_after == fds_before
    bound = before["traced_kib"] * 1.10 + 256
    assert after["traced_kib"] <= bound, (before, after)
    assert debounced["traced_kib"] <= bound, (before, debounced)
    assert after["traced_kib"] <= middle["traced_kib"] * 1.02 + 256, (middle, after)
    assert debounced["fds"] == before["fds"]

    # Last: a mixed state after the default debounce; the bus shows what the testbed has.
    for port in sorted(churn.devnum)[1::3]:
        churn.unplug(port)
    final = wait_for_devices(loaded, static | churn.present, timeout=30)
    assert len(final) == len(static) + 1 + len(churn.devnum)

    growth = (after["traced_kib"] - before["traced_kib"]) / before["traced_kib"] * 100
    reliability.record(
        "load: udev churn", events=events, warmup_events=warmup, flap_events=flaps,
        devices=len(static) + 1 + len(churn.ports), guests=GUESTS,
        events_per_second=round(events / settled), traced_before_kib=before["traced_kib"],
        traced_middle_kib=middle["traced_kib"], traced_after_kib=after["traced_kib"],
        traced_after_debounce_kib=debounced["traced_kib"], growth_percent=round(growth, 2),
        rss_mib=round(rss_after, 1), fds_before=fds_before, fds_after=fds_after)
    print(f"churn: {events} events in {settled:.1f}s ({events / settled:.0f}/s, lock-step "
          f"with the daemon's log); traced {before['traced_kib']:.0f} → "
          f"{middle['traced_kib']:.0f} → {after['traced_kib']:.0f} KiB ({growth:+.2f} %), "
          f"after debounce {debounced['traced_kib']:.0f} KiB; rss {before['rss_mib']} → "
          f"{after['rss_mib']} → {debounced['rss_mib']} MiB; fds {fds_before} → {fds_after}; "
          f"uevents in all {churn.events}")


FLOOD = """\
import asyncio, sys
from dbus_fast import Message
from phyllod.bus.service import _Bus

async def main(address: str, count: int) -> None:
    bus = await _Bus(bus_address=address).connect()
    for _ in range(count):
        bus.send(Message.new_signal("/me/phyllo/Flood", "me.phyllo.Flood", "Burst", "s",
                                    ["x" * 2000]))
    # Queued after every signal: its reply means the bus daemon read them all.
    reply = await asyncio.wait_for(bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetId")), 60)
    print("connected" if bus.connected else "dropped", reply.message_type.name)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_a_burst_larger_than_the_socket_buffer_keeps_the_bus(system_bus, reliability):
    """phyllod's bus connection survives a burst of signals bigger than its socket buffer.

    dbus-fast's writer dropped the connection on EAGAIN at a message boundary
    (found by the coldplug test: 550 devices at start made phyllod lose the
    bus or hang before READY=1); ``_SendSocket`` makes it wait instead. Run
    with the venv's dbus-fast and, when installed, the distribution's (1.84 in
    Debian 12), which has the same writer.
    """
    count = reliability.size(3000, 20000)  # 2 KB each: several times any socket buffer
    pythons = [sys.executable]
    system = Path("/usr/bin/python3")
    if system.exists() and system != Path(sys.executable) and subprocess.run(
            [system, "-c", "import dbus_fast"], capture_output=True).returncode == 0:
        pythons.append(str(system))
    for python in pythons:
        done = subprocess.run([python, "-c", FLOOD, system_bus.address, str(count)],
                              capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, f"{python}: {done.stderr}"
        assert done.stdout.split() == ["connected", "METHOD_RETURN"], (python, done.stdout)
    reliability.record("load: D-Bus burst", signals=count, kib=count * 2000 // 1024,
                       dbus_fast_releases=len(pythons))


def test_losing_the_bus_ends_the_daemon_for_a_restart(phyllod: Phyllod, system_bus,
                                                      reliability):
    """The bus daemon going away (a restart of dbus, a crash) is no traceback and no
    daemon left running unreachable: phyllod logs it and exits 1 for systemd's restart.

    Found with the burst above: dbus-fast's ``wait_for_disconnect`` raises what
    broke the connection (EOFError here), which ended the watching task with
    "Task exception was never retrieved" and phyllod ran on without its bus.
    """
    phyllod.start()
    assert phyllod.proc is not None
    d = phyllod.proc
    started = time.monotonic()
    system_bus.stop()
    assert d.proc.wait(20) == 1
    seconds = time.monotonic() - started
    d.wait_log(r"ERROR lost the connection to the .* bus \(EOFError\)")
    assert "Traceback" not in d.log()
    reliability.record("bus lost: exit for a restart", exit_code=1,
                       seconds_to_exit=round(seconds, 2))
