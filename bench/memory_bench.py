"""Memory benchmark: the daemon's RSS, PSS and anonymous memory, idle and after udev churn.

Why: phyllod runs for months on desktops and servers. RSS counts the shared
libraries (libvirt and dbus-fast alone are some 50 MiB of it, mostly shared
with other processes), so the figures that say what phyllod itself costs are
PSS and, above all, anonymous memory (its heap, its code objects, what the
libraries allocate): /proc/PID/smaps_rollup's ``Pss`` and ``Anonymous``.

Cases, for each source tree given (this checkout, and ``--baseline DIR``, say
main's code from ``git worktree add``, in the same run):

- idle with no device and no guest (an empty libvirt test driver file);
- idle with ``--devices`` leaf devices behind hubs (ten per hub: 500 leaves
  are 550 device objects) among ``--guests`` running guests, with the load
  tests' policy (attach, deny, ask rules; the test driver refuses every
  attach, so there are failures and backoff too), coldplugged;
- the same daemon after a warm-up of ``--warmup`` uevents, then after
  ``--events`` more (umockdev plugs and unplugs in ports of bus 9, paced by
  the daemon's log as tests/integration/test_load.py does), every port taken
  again each time so the state compared is the same: growth between the two
  is what the events leaked, or the allocator's high-water mark rising once
  (freed memory it keeps): so the same churn runs a second time, and growth
  that goes on in the second is a leak.

A floor is measured too, once: a Python process that imports only the libraries
the daemon runs on (asyncio, libvirt-python, dbus-fast, pyudev, python-systemd),
opens libvirt's test driver and idles in an asyncio loop: what any daemon
written this way costs before a line of its own code.

Each figure is the median of ``--samples`` reads a fifth of a second apart.
The daemon is the real one (``python -m phyllod.cli``), on a private bus,
over umockdev devices, as in bench/dbus_bench.py; the bench process runs
under umockdev's preload:
``umockdev-wrapper .venv/bin/python bench/memory_bench.py [--baseline DIR] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "support"))

import private_bus  # noqa: E402
import testbed  # noqa: E402
from daemon_process import DaemonProcess, NotifySocket, child_env  # noqa: E402
from load import POLICY, Churn, node_xml, plug_tree  # noqa: E402

FIELDS = {"Rss:": "rss_kib", "Pss:": "pss_kib", "Anonymous:": "anon_kib"}
#: What the daemon logs for each plug and unplug with no debounce (the churn's pace).
MARKERS = (") plugged in (", ") unplugged")


@dataclass(frozen=True)
class Figure:
    tree: str
    case: str
    devices: int  # device objects present (hubs included)
    guests: int
    events: int  # uevents sent to this daemon before the figure
    rss_kib: int
    pss_kib: int
    anon_kib: int


def rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and Anonymous (kB) from /proc/PID/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, *rest = line.split()
        if key in FIELDS:
            out[FIELDS[key]] = int(rest[0])
    return out


def sample(pid: int, samples: int) -> dict[str, int]:
    """The median of ``samples`` reads of each field."""
    reads = []
    for _ in range(samples):
        reads.append(rollup(pid))
        time.sleep(0.2)
    return {k: int(statistics.median(r[k] for r in reads)) for k in FIELDS.values()}


class Run:
    """One tree's daemon on its own private bus and testbed."""

    def __init__(self, stack: ExitStack, work: Path, tree: Path, devices: int,
                 guests: int) -> None:
        self.bus = private_bus.PrivateSystemBus()
        stack.callback(self.bus.stop)
        self.bus.start()
        self.tb = testbed.UsbTestbed()
        self.present = plug_tree(self.tb, devices) if devices else set()
        self.churn = Churn(self.tb) if devices else None
        node = work / "node.xml"
        node.write_text(node_xml(guests))
        (work / "policy.d").mkdir()
        (work / "policy.d" / "10-load.toml").write_text(POLICY + "\n[settings]\ndebounce = 0\n")
        notify = NotifySocket(work / "notify")
        stack.callback(notify.close)
        self.proc = DaemonProcess(
            ["--bus", self.bus.address, "--connect", f"test://{node}",
             "--policy-dir", str(work / "policy.d"), "--state-dir", str(work / "state")],
            child_env(**self.tb.env, NOTIFY_SOCKET=str(notify.path)), tree=tree)
        stack.callback(self.proc.stop)
        try:
            notify.wait_for("READY=1", timeout=300)
            self.proc.wait_log(rf"connected to test://{node}: {guests} guests", timeout=60)
        except AssertionError:
            print(self.proc.log()[-4000:], file=sys.stderr)
            raise
        self.devices = len(self.present) + (len(self.churn.present) if self.churn else 0)
        self.guests = guests

    def churned(self, events: int) -> None:
        """``events`` uevents, then every port taken again; waits until the daemon
        logged them all (the last one, with the window's slack, then settles)."""
        assert self.churn is not None
        self.churn.follow(self.proc, *MARKERS)
        self.churn.toggle(events)
        self.churn.fill()
        self.churn.settle()
        time.sleep(2.0)  # the attach retries the last plugs started settle


FLOOR = """\
import asyncio, libvirt, pyudev, systemd.daemon, systemd.journal
import dbus_fast.aio
conn = libvirt.open("test:///default")
print("ready", flush=True)
asyncio.run(asyncio.sleep(3600))
"""


def floor(samples: int, preload: bool) -> Figure:
    """The libraries' own cost (see the module's docstring), with or without umockdev's
    preload (which the daemon runs under here, not in production)."""
    env = {"PATH": "/usr/bin:/bin"}
    if preload:
        env.update({k: v for k, v in os.environ.items() if k.startswith(("LD_", "UMOCKDEV"))})
    proc = subprocess.Popen([sys.executable, "-c", FLOOR], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        return Figure("libraries only" + (", umockdev's preload" if preload else ""), "floor",
                      0, 0, 0, **sample(proc.pid, samples))
    finally:
        proc.kill()
        proc.wait()


def measure(tree: Path, label: str, args: argparse.Namespace) -> list[Figure]:
    figures = []
    with tempfile.TemporaryDirectory(prefix="phyllod-memory-") as tmp, ExitStack() as stack:
        (Path(tmp) / "empty").mkdir()
        empty = Run(stack, Path(tmp) / "empty", tree, 0, 0)
        time.sleep(2.0)
        figures.append(Figure(label, "idle, nothing", 0, 0, 0,
                              **sample(empty.proc.proc.pid, args.samples)))
    with tempfile.TemporaryDirectory(prefix="phyllod-memory-") as tmp, ExitStack() as stack:
        (Path(tmp) / "load").mkdir()
        run = Run(stack, Path(tmp) / "load", tree, args.devices, args.guests)
        pid = run.proc.proc.pid
        time.sleep(3.0)
        figures.append(Figure(label, "idle, loaded", run.devices, run.guests, 0,
                              **sample(pid, args.samples)))
        run.churned(args.warmup)
        figures.append(Figure(label, "after warm-up", run.devices, run.guests, args.warmup,
                              **sample(pid, args.samples)))
        run.churned(args.events)
        figures.append(Figure(label, "after churn", run.devices, run.guests,
                              args.warmup + args.events, **sample(pid, args.samples)))
        run.churned(args.events)
        figures.append(Figure(label, "after a second churn", run.devices, run.guests,
                              args.warmup + 2 * args.events, **sample(pid, args.samples)))
        if not run.proc.alive or "Traceback" in run.proc.log():
            raise RuntimeError(f"{label}: the daemon died or logged a traceback:\n"
                               f"{run.proc.log()[-4000:]}")
    return figures


def report(figures: list[Figure], labels: list[str]) -> None:
    mib = 1024
    for f in figures:
        if f.case == "floor":
            print(f"floor ({f.tree}: imports, a libvirt test connection, an idle asyncio "
                  f"loop): anon {f.anon_kib / mib:.1f} MiB, PSS {f.pss_kib / mib:.1f} MiB, "
                  f"RSS {f.rss_kib / mib:.1f} MiB\n")
    figures = [f for f in figures if f.case != "floor"]
    print("| case | devices, guests | events | " + " | ".join(
        f"{label}: anon / PSS / RSS MiB" for label in labels) + " |")
    print("|---|---|---:|" + "---:|" * len(labels))
    cases = list(dict.fromkeys(f.case for f in figures))
    for case in cases:
        row = {f.tree: f for f in figures if f.case == case}
        first = next(iter(row.values()))
        cells = [f"{row[label].anon_kib / mib:.1f} / {row[label].pss_kib / mib:.1f} / "
                 f"{row[label].rss_kib / mib:.1f}" if label in row else "" for label in labels]
        print(f"| {case} | {first.devices}, {first.guests} | {first.events} | "
              + " | ".join(cells) + " |")
    for label in labels:
        mine = {f.case: f for f in figures if f.tree == label}
        for before, after in (("after warm-up", "after churn"),
                              ("after churn", "after a second churn")):
            growth = mine[after].anon_kib - mine[before].anon_kib
            events = mine[after].events - mine[before].events
            print(f"{label}: anonymous growth over {events} events, {before} → {after}: "
                  f"{growth:+d} kB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500,
                        help="leaf devices behind hubs (default 500: 550 device objects)")
    parser.add_argument("--guests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2000, help="uevents before the first "
                        "churn figure (default 2000: past the step the interpreter's table "
                        "of interned strings takes some 1,000-2,000 events in, see "
                        "tests/integration/test_load.py)")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another source tree to measure in the same run (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON list of figures")
    args = parser.parse_args()
    why = testbed.available() or private_bus.available()
    if why:
        print(f"memory bench cannot run: {why}", file=sys.stderr)
        return 1
    trees = [(tree.resolve(), f"{tree.resolve().name} (baseline)") for tree in args.baseline]
    trees.append((ROOT, f"{ROOT.name} (this)"))
    figures = [floor(args.samples, preload=False), floor(args.samples, preload=True)]
    for tree, label in trees:
        figures += measure(tree, label, args)
    if args.json:
        print(json.dumps([asdict(f) for f in figures], indent=1))
    else:
        report(figures, [label for _, label in trees])
    return 0


if __name__ == "__main__":
    sys.exit(main())
