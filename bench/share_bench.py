"""phyllod's own share of a plug, at desk scale, beside libvirt's floor (issue 18).

The share is udev event received → libvirt call issued: what phyllod itself
adds between the kernel's news and libvirt's work. It is measured with the
parts the integration tier runs (tests/integration/support): a private real
libvirtd with a running QEMU guest ``work``, USB devices in a umockdev
testbed (real libudev, real uevents), the daemon as a subprocess with
``PHYLLOD_TRACE`` set (phyllod/host/trace.py). All times are CLOCK_MONOTONIC,
the same clock in the daemon, in its libvirt worker thread and here.

Desk scale: ``--desk`` devices (default 19) are present at start under a
ten-rule policy, then one keyboard the policy sends to ``work`` is plugged
and unplugged ``--plugs`` times (a new device number each time, as the
kernel gives). Per plug, from the trace:

- received → issued: the first ``udev-received`` after the plug to the
  worker thread's ``attach-call``, right before ``attachDeviceFlags`` (it
  includes the hand-off to the worker and its ``lookupByName``);
- received → step: the same, up to the step handed to the worker (the loop's
  own work only);
- within it, where the loop's time went: received → ``udev-handled`` (the
  uevent translated and taken in by the parts), and in the turn that planned
  the step, its start → ``turn-facts`` (host facts read) → ``turn-planned``;
- phyllod's call: ``attach-call`` → ``attach-returned``.

The floor, in the same run: after each plug, this process makes the same
``attachDeviceFlags`` (the same hostdev XML) on a connection it opened once
and a domain it looked up once, timed around the bare call. This machine
kind's kernel has no USB, so libvirt answers both with "cannot open
directory '/sys/bus/usb/devices'": the call is issued and returns, which is
what is measured; an attach that succeeds is the lab's (bench/lab_latency.py).

Idle, against this real libvirtd (whose keepalive the test driver lacks):
after the plugs the daemon is left alone ``--idle-seconds`` and its threads'
context switches (/proc/PID/task/*/status, voluntary + involuntary: every
wake-up is one; tests/integration/support/wakeups.py) are counted, per thread.

``--baseline DIR`` measures another source tree first, in the same run (its
own libvirtd and testbed): a tree without the trace hook is measured from
its log lines instead ("plugged in" → "attaching … attachDeviceFlags"), at
the log's millisecond resolution and without the udev translation.

A report, not a test (root, like the integration tier):
``umockdev-wrapper .venv/bin/python bench/share_bench.py [--plugs N] [--baseline DIR]
[--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "support"))

import libvirt  # noqa: E402
import libvirtd  # noqa: E402
import testbed  # noqa: E402
import wakeups  # noqa: E402
from daemon_process import DaemonProcess, NotifySocket, child_env  # noqa: E402
from policies import rule  # noqa: E402

BENCH_PORT, BENCH_SERIAL = "1-9", "share-bench"
T = TypeVar("T")

#: Ten rules, as a desk's policy has: most match nothing present, one the bench keyboard.
POLICY = "\n".join([
    rule("security key", 'vendor = "1050", product = "0407"', guest="work"),
    rule("bluetooth", 'interface_class = "e00101"', guest="desktop"),
    rule("no mass storage", 'interface_class = "08"', action="deny"),
    rule("headsets: ask", 'interface_class = "01", not_interface_class = "0e"',
         action="ask"),
    rule("webcam", 'interface_class = "0e"', guest="media"),
    rule("port 2-1", 'port = "2-1"', guest="media"),
    rule("printer", 'interface_class = "07"', action="ignore"),
    rule("mouse stays", 'vendor = "046d", product = "c52b"', action="ignore"),
    rule("smartcard", 'interface_class = "0b"', guest="work"),
    rule("bench keyboard", f'vendor = "0627", serial = "{BENCH_SERIAL}"', guest="work"),
])

#: What a desk has plugged in: (vendor, product, interfaces).
DESK_KINDS = [
    ("046d", "c52b", ("030102",)), ("0627", "0001", ("030101",)), ("8087", "0aaa", ("e00101",)),
    ("0781", "5583", ("080650",)), ("046d", "0825", ("0e0100", "010100")),
    ("0bda", "8153", ("ff0000",)), ("1d50", "6089", ("ff0000",)),
]


@dataclass
class Samples:
    """Seconds per plug; a plug whose points were not all seen leaves its row out."""

    share: list[float] = field(default_factory=list)
    step: list[float] = field(default_factory=list)
    queued: list[float] = field(default_factory=list)
    turn: list[float] = field(default_factory=list)
    taken: list[float] = field(default_factory=list)
    facts: list[float] = field(default_factory=list)
    planned: list[float] = field(default_factory=list)
    call: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    delivery: list[float] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    facts_reads: list[int] = field(default_factory=list)


def read_trace(path: Path, since_ns: int) -> list[tuple[int, str, str]]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        ns, name, subject = [*line.split(" ", 2), "", ""][:3]
        if ns.isdigit() and int(ns) >= since_ns:
            out.append((int(ns), name, subject))
    return out


def first(points: list[tuple[int, str, str]], name: str, after: int = 0) -> int | None:
    return next((ns for ns, n, _ in points if n == name and ns >= after), None)


def wait(what: str, test: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = test()
        if found:
            return found
        time.sleep(0.005)
    raise TimeoutError(f"timed out waiting for {what}")


def facts_reads(daemon: DaemonProcess) -> int:
    """How often the daemon has read the host facts (its SIGUSR1 memory line says)."""
    mark = daemon.mark()
    daemon.signal(signal.SIGUSR1)
    return int(daemon.wait_log(r"host facts read (\d+) times", start=mark,
                               timeout=5).group(1))


def hostdev(bus: int, devnum: int) -> str:
    return (f"<hostdev mode='subsystem' type='usb'><source><vendor id='0x0627'/>"
            f"<product id='0x0001'/><address bus='{bus}' device='{devnum}'/></source>"
            f"</hostdev>")


def log_ms(line: str) -> float:
    """A stderr log line's own time (``2026-12-02 13:46:17,496 INFO …``), in ms."""
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp() * 1e3


def from_log(lines: list[str]) -> tuple[float, float] | None:
    """Without a trace (a tree older than host/trace): (plugged in → attachDeviceFlags
    logged, → its failure logged) in seconds, at the log's millisecond resolution."""
    seen = next((ln for ln in lines if f"usb:{BENCH_PORT} " in ln and "plugged in" in ln), None)
    issued = next((ln for ln in lines if f"attaching usb:{BENCH_PORT} " in ln), None)
    returned = next((ln for ln in lines if f" usb:{BENCH_PORT} to work " in ln
                     and ("attach usb" in ln or "attached usb" in ln)), None)
    if seen is None or issued is None or returned is None:
        return None
    return ((log_ms(issued) - log_ms(seen)) / 1e3, (log_ms(returned) - log_ms(issued)) / 1e3)


def plug_once(i: int, tb: testbed.UsbTestbed, daemon: DaemonProcess, trace: Path,
              dom: libvirt.virDomain, s: Samples) -> None:
    devnum = 20 + i % 100
    reads = facts_reads(daemon)
    mark = daemon.mark()
    t0 = time.monotonic_ns()
    tb.plug(BENCH_PORT, devnum=devnum, serial=BENCH_SERIAL)
    daemon.wait_log(rf"attach(ed)? usb:{BENCH_PORT} to work (failed|in)", start=mark)
    points = read_trace(trace, t0)
    if not points and (logged := from_log(daemon.lines[mark:])) is not None:
        s.share.append(logged[0])
        s.call.append(logged[1])
    received = first(points, "udev-received")
    issued = first(points, "attach-call")
    step = first(points, "step-issued")
    returned = first(points, "attach-returned")
    if None not in (received, issued, step, returned):
        s.delivery.append((received - t0) / 1e9)
        s.share.append((issued - received) / 1e9)
        s.step.append((step - received) / 1e9)
        s.call.append((returned - issued) / 1e9)
        s.turns.append(sum(1 for ns, n, _ in points if n == "turn-start" and ns <= issued))
        # The turn that planned the step: the last one to start before it.
        start = max(ns for ns, n, _ in points if n == "turn-start" and ns <= step)
        end = first(points, "turn-end", start)
        s.queued.append((start - received) / 1e9)
        if end is not None:
            s.turn.append((end - start) / 1e9)
        handled = first(points, "udev-handled", received)
        facts = first(points, "turn-facts", start)
        planned = first(points, "turn-planned", start)
        if handled is not None and handled <= start:
            s.taken.append((handled - received) / 1e9)
        if facts is not None and planned is not None and planned <= step:
            s.facts.append((facts - start) / 1e9)
            s.planned.append((planned - facts) / 1e9)
    with contextlib.suppress(AssertionError):  # a tree whose SIGUSR1 line says no count
        s.facts_reads.append(facts_reads(daemon) - reads)
    xml = hostdev(1, devnum)
    c0 = time.monotonic_ns()
    with contextlib.suppress(libvirt.libvirtError):  # phyllod's answer: no USB here
        dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    s.floor.append((time.monotonic_ns() - c0) / 1e9)
    mark = daemon.mark()
    tb.unplug(BENCH_PORT)
    daemon.wait_log(rf"usb:{BENCH_PORT} .* unplugged", start=mark)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median_ms": statistics.median(ordered) * 1e3,
            "p90_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1e3,
            "n": len(ordered)}


def _nothing(name: str, subject: object = "-") -> None:
    """What a call that does nothing costs: the baseline of the trace's cost."""


def trace_cost_ns() -> dict[str, float]:
    """One ``trace.point`` with PHYLLOD_TRACE unset against a call to an empty
    function, interleaved, in this process (ns per call, best of 5 rounds)."""
    from phyllod.host import trace
    assert not trace._PATH, "run the bench without PHYLLOD_TRACE in its own environment"
    n, best = 100_000, {"trace_point": float("inf"), "empty_function": float("inf")}
    for _ in range(5):
        for key, fn in (("trace_point", trace.point), ("empty_function", _nothing)):
            t0 = time.perf_counter_ns()
            for i in range(n):
                fn("udev-received", i)
            best[key] = min(best[key], (time.perf_counter_ns() - t0) / n)
    return best


def run(args: argparse.Namespace, tree: Path) -> dict:
    """One tree's daemon (``tree``'s phyllod package) on its own libvirtd and testbed."""
    work = Path(tempfile.mkdtemp(prefix="phyllod-share-"))
    policy_dir = work / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "10-desk.toml").write_text(POLICY)
    lv = libvirtd.PrivateLibvirtd(work / "libvirtd", work / "cache")
    (work / "libvirtd").mkdir()
    lv.start()
    tb = testbed.UsbTestbed()
    daemon = notify = None
    trace = work / "trace"
    s = Samples()
    try:
        libvirtd.start_guest(lv.uri, "work")
        for n in range(args.desk):
            vendor, product, interfaces = DESK_KINDS[n % len(DESK_KINDS)]
            bus, port = 1 + n // 8, 1 + n % 8
            tb.plug(f"{bus}-{port}", devnum=2 + n, vendor=vendor, product=product,
                    serial=f"DESK{n:04d}", interfaces=interfaces)
        notify = NotifySocket(work / "notify")
        # --metrics: the daemon keeps its metrics file (a tree without them ignores it)
        metrics = {"PHYLLOD_METRICS_FILE": str(work / "phyllod.prom")} if args.metrics else {}
        daemon = DaemonProcess(["--policy-dir", str(policy_dir), "--connect", lv.uri],
                               child_env(**tb.env, NOTIFY_SOCKET=str(notify.path),
                                         PHYLLOD_TRACE=str(trace), PYTHONPATH=str(tree),
                                         # `python -m` would put our cwd (this tree) first
                                         PYTHONSAFEPATH="1", **metrics))
        notify.wait_for("READY=1", timeout=60)
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised
        conn = libvirt.open(lv.uri)
        dom = conn.lookupByName("work")
        time.sleep(1.0)  # the start's own turns and retries settle
        for i in range(args.plugs):
            plug_once(i, tb, daemon, trace, dom, s)
        idle, ticks = (wakeups.over(daemon.proc.pid, args.idle_seconds) if args.idle_seconds
                       else ({}, 0))
        conn.close()
        log = daemon.log()
    finally:
        if daemon is not None:
            daemon.stop()
        if notify is not None:
            notify.close()
        lv.kill_guests()
        lv.stop()
    return {
        "bench": "share", "tree": str(tree), "source": "trace" if trace.exists() else "log",
        "plugs": args.plugs, "desk_devices": args.desk,
        "rules": POLICY.count("[[rule]]"),
        "samples_s": {k: v for k, v in vars(s).items() if k not in ("turns", "facts_reads")},
        "turns_before_issue": s.turns, "facts_reads_per_plug": s.facts_reads,
        "summary": {k: summary(v) for k, v in vars(s).items()
                    if k not in ("turns", "facts_reads")},
        "idle": {"seconds": args.idle_seconds, "wakeups_by_thread": idle, "cpu_ticks": ticks,
                 "per_second": sum(idle.values()) / args.idle_seconds
                 if args.idle_seconds else None},
        "trace_unset_ns_per_call": trace_cost_ns(),
        "libvirt_answer": next((ln.split("failed: ", 1)[1].split(" [device=")[0]
                                for ln in log.splitlines()
                                if "attach usb:" in ln and "failed: " in ln), ""),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugs", type=int, default=30)
    parser.add_argument("--desk", type=int, default=19, help="devices present besides the "
                        "plugged one (default 19: 20 at desk scale)")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another source tree (say main's, from git worktree add) to "
                        "measure in the same run, first; repeatable")
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    parser.add_argument("--metrics", action="store_true",
                        help="the daemon writes its metrics file (README, 'Metrics for a fleet')")
    args = parser.parse_args()
    why = libvirtd.available() or testbed.available()
    if why:
        print(f"share bench cannot run: {why}", file=sys.stderr)
        return 1
    os.environ.pop("PHYLLOD_TRACE", None)
    baselines = [run(args, tree.resolve()) for tree in args.baseline]
    result = run(args, ROOT)
    result["baselines"] = baselines
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    for other in baselines:
        m = other["summary"]
        print(f"baseline {other['tree']} (from its {other['source']}): received → issued "
              + (f"median {m['share']['median_ms']:.2f} ms, p90 {m['share']['p90_ms']:.2f} ms; "
                 if m["share"] else "not seen; ")
              + (f"floor median {m['floor']['median_ms']:.2f} ms" if m["floor"] else ""))
    m = result["summary"]
    print(f"phyllod's share at desk scale ({args.desk + 1} devices, {result['rules']} rules, "
          f"{args.plugs} plugs; private libvirtd, umockdev, daemon as a subprocess)")
    print("| ms | median | p90 |")
    print("|---|---:|---:|")
    for key, label in (("share", "udev event received → attachDeviceFlags issued"),
                       ("step", "udev event received → step handed to the worker"),
                       ("queued", "  of which: received → the planning turn's start"),
                       ("taken", "    received → taken in (udev translation, the parts)"),
                       ("turn", "  the planning turn, start → end"),
                       ("facts", "    turn start → host facts read"),
                       ("planned", "    host facts read → replanned"),
                       ("call", "phyllod's attachDeviceFlags, issued → returned"),
                       ("floor", "floor: a bare attachDeviceFlags on an open connection"),
                       ("delivery", "umockdev add → phyllod received it (not phyllod's)")):
        row = m[key]
        if row:
            print(f"| {label} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} |")
    if m["share"] and m["floor"]:
        print(f"share / floor (medians): {m['share']['median_ms'] / m['floor']['median_ms']:.2f}x")
    print(f"host facts reads per plug: {sorted(set(result['facts_reads_per_plug']))}; "
          f"loop turns up to the call: {sorted(set(result['turns_before_issue']))}")
    idle = result["idle"]
    if idle["seconds"]:
        print(f"idle against a real libvirtd, {idle['seconds']:.0f} s: "
              f"{idle['per_second']:.2f} wake-ups/s {idle['wakeups_by_thread']}")
    cost = result["trace_unset_ns_per_call"]
    print(f"trace.point with PHYLLOD_TRACE unset: {cost['trace_point']:.0f} ns a call; "
          f"an empty function: {cost['empty_function']:.0f} ns")
    print(f"libvirt's answer: {result['libvirt_answer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
