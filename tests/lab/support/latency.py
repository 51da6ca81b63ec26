"""Plug → live in L2, phyllod against udev + virsh, on one L1: shared by
bench/lab_latency.py (the full report) and tests/lab/test_lab_latency_report.py
(CI's few plugs, printed, never asserted).

phyllod against the baseline most users run today (a udev rule whose shell
script calls ``virsh attach-device``), in one run on one L1, interleaved plug
by plug so both see the same load. Each handles only its own device: QEMU's
HID devices all say 0627:0001, so they are told apart by serial number.

"Live in L2" is libvirt's DEVICE_ADDED event for L2, recorded in L1 by a
small watcher; L1's clock is mapped to ours through the guest agent's
``guest-get-time`` (offset from the round trip with the smallest delay).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lab as harness
from lab_phyllod import L2, LabPhyllod, wait_until

PHYLLOD_SERIAL, PHYLLOD_PORT = "phyllod-bench", 1
BASELINE_SERIAL, BASELINE_PORT = "baseline-bench", 2
TOOLS = (("phyllod", PHYLLOD_SERIAL, PHYLLOD_PORT), ("baseline", BASELINE_SERIAL, BASELINE_PORT))

POLICY = f"""\
[[rule]]
name = "bench keyboard"
match = {{ vendor = "0627", serial = "{PHYLLOD_SERIAL}" }}
guest = "{L2}"
"""

# The baseline as published scripts write it, with the remove half most lack.
UDEV_RULE = (
    'ACTION=="add", SUBSYSTEM=="usb", ENV{DEVTYPE}=="usb_device", '
    f'ATTR{{serial}}=="{BASELINE_SERIAL}", RUN+="/usr/local/bin/baseline-hotplug attach"\n'
    'ACTION=="remove", SUBSYSTEM=="usb", ENV{DEVTYPE}=="usb_device", '
    f'ENV{{DEVPATH}}=="*/1-{BASELINE_PORT}", RUN+="/usr/local/bin/baseline-hotplug detach"\n'
)
RULE_PATH = "/etc/udev/rules.d/90-baseline.rules"

SCRIPT = f"""\
#!/bin/sh
# udev + virsh, the way people do it by hand today.
echo "$(date +%s.%N) seen $1 $BUSNUM $DEVNUM" >> /tmp/baseline.log
xml=/tmp/baseline-$BUSNUM-$DEVNUM.xml
cat > $xml <<EOF
<hostdev mode='subsystem' type='usb'>
  <source><vendor id='0x0627'/><product id='0x0001'/>
  <address bus='$(expr $BUSNUM + 0)' device='$(expr $DEVNUM + 0)'/></source>
</hostdev>
EOF
if [ "$1" = attach ]; then
    virsh attach-device {L2} $xml --live >/dev/null 2>&1
else
    virsh detach-device {L2} $xml --live >/dev/null 2>&1
fi
echo "$(date +%s.%N) done $1 $? $BUSNUM $DEVNUM" >> /tmp/baseline.log
"""

WATCHER = f"""\
import sys, time, libvirt
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open("qemu:///system")
def added(conn, dom, alias, opaque):
    print(f"{{time.time():.6f}} added {{alias}}", flush=True)
def removed(conn, dom, alias, opaque):
    print(f"{{time.time():.6f}} removed {{alias}}", flush=True)
dom = conn.lookupByName("{L2}")
conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, added, None)
conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, removed, None)
print("ready", flush=True)
while True:
    libvirt.virEventRunDefaultImpl()
"""


#: The tables the lab session's reports produced, for its terminal summary
#: (tests/lab/conftest.py prints them at the end of the run).
REPORTS: list[list[str]] = []


def _tools() -> dict[str, list[float]]:
    return {"phyllod": [], "baseline": []}


@dataclass
class Latency:
    """Seconds, every sample: per tool, QMP device_add → DEVICE_ADDED (``add``) and
    device_del → DEVICE_REMOVED (``remove``); phyllod's share from its journal; the
    script's own handler time from its log."""

    add: dict[str, list[float]] = field(default_factory=_tools)
    remove: dict[str, list[float]] = field(default_factory=_tools)
    phyllod_issued: list[float] = field(default_factory=list)
    phyllod_returned: list[float] = field(default_factory=list)
    baseline_handler: list[float] = field(default_factory=list)
    #: With the trace hook: seconds per stretch of phyllod's share (STRETCHES).
    stretches: dict[str, list[float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"add_s": self.add, "del_s": self.remove, "trace_stretches_s": self.stretches,
                "phyllod_received_to_issued_s": self.phyllod_issued,
                "phyllod_received_to_returned_s": self.phyllod_returned,
                "baseline_handler_s": self.baseline_handler}

    def medians_ms(self) -> dict[str, float | None]:
        def med(values: list[float]) -> float | None:
            return statistics.median(values) * 1e3 if values else None
        return {"add_phyllod": med(self.add["phyllod"]),
                "add_baseline": med(self.add["baseline"]),
                "del_phyllod": med(self.remove["phyllod"]),
                "del_baseline": med(self.remove["baseline"]),
                "phyllod_issued": med(self.phyllod_issued),
                "phyllod_returned": med(self.phyllod_returned),
                "baseline_handler": med(self.baseline_handler)}


def clock_offset(l1: harness.Lab, samples: int = 7) -> float:
    """L1's clock minus ours, from the guest-agent round trip with the least delay."""
    best = (float("inf"), 0.0)
    for _ in range(samples):
        t0 = time.time()
        guest_ns = l1._qga_call("guest-get-time")
        t1 = time.time()
        best = min(best, (t1 - t0, guest_ns / 1e9 - (t0 + t1) / 2))
    return best[1]


def watcher_lines(l1: harness.Lab) -> list[str]:
    return l1.check("cat /tmp/watch.log").splitlines()


def plug_once(l1: harness.Lab, serial: str, port: int, offset: float) -> tuple[float, float]:
    """Plug, wait for L2 to hold it, unplug, wait for L2 to drop it.

    Returns (device_add → DEVICE_ADDED, device_del → DEVICE_REMOVED) in seconds.
    """
    before = len(watcher_lines(l1))
    t_add = time.time()
    l1.qmp("device_add", driver="usb-kbd", bus="xhci.0", port=str(port), id="bench",
           serial=serial)
    line = wait_until("DEVICE_ADDED in L2", lambda: next(
        (x for x in watcher_lines(l1)[before:] if " added " in x), None), 60, 0.1)
    added = float(line.split()[0]) - offset - t_add
    before = len(watcher_lines(l1))
    t_del = time.time()
    l1.qmp("device_del", id="bench")
    line = wait_until("DEVICE_REMOVED in L2", lambda: next(
        (x for x in watcher_lines(l1)[before:] if " removed " in x), None), 60, 0.1)
    return added, float(line.split()[0]) - offset - t_del


def phyllod_share(journal: list[dict[str, str]]) -> tuple[list[float], list[float]]:
    """From phyllod's journal: udev add seen → attach issued, → attach returned."""
    issued, returned = [], []
    seen = None
    for entry in journal:
        if entry.get("PHYLLOD_DEVICE") != f"usb:1-{PHYLLOD_PORT}":
            continue
        msg, at = entry["MESSAGE"], int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        if ") plugged in (" in msg:
            seen = at
        elif seen is not None and "libvirt attachDeviceFlags" in msg:
            issued.append(at - seen)
        elif seen is not None and msg.startswith("attached usb:"):
            returned.append(at - seen)
            seen = None
    return issued, returned


def baseline_share(log: str) -> list[float]:
    """From the baseline script's own log: udev RUN started → virsh attach returned."""
    out, seen = [], None
    for line in log.splitlines():
        at, what, action = line.split()[:3]
        if what == "seen" and action == "attach":
            seen = float(at)
        elif what == "done" and action == "attach" and seen is not None:
            out.append(float(at) - seen)
            seen = None
    return out


#: With ``trace``: phyllod's unit in L1 gets the trace hook (phyllod/host/trace.py),
#: in its runtime directory, read back before phyllod stops.
TRACE_DROP_IN = "/run/systemd/system/phyllod.service.d/trace.conf"
TRACE_FILE = "/run/phyllod/trace"
#: The trace's stretches of a plug, in order: (from point, to point, what it is).
STRETCHES = (("udev-received", "udev-handled", "the uevent translated and taken in"),
             ("udev-handled", "turn-start", "queued until the turn"),
             ("turn-start", "turn-facts", "the turn: host facts"),
             ("turn-facts", "turn-planned", "the turn: world and replan"),
             ("turn-planned", "step-issued", "the turn: steps started"),
             ("step-issued", "attach-call", "to the worker thread, attachDeviceFlags"))


def trace_stretches(text: str, port: str) -> dict[str, list[float]]:
    """Per plug of ``port`` (from the ``udev-received`` of the uevent of its device
    that was taken in: the kernel's monitor also receives the ``add`` and
    ``change`` it passes over; dropped if the turn that follows plans no attach
    of it, as for its remove): seconds of each stretch of :data:`STRETCHES`."""
    points = []
    for line in text.splitlines():
        ns, name, subject = [*line.split(" ", 2), "", ""][:3]
        if ns.isdigit():
            points.append((int(ns), name, subject))
    out: dict[str, list[float]] = {what: [] for _, _, what in STRETCHES}
    mark: dict[str, int] = {}
    for ns, name, subject in points:
        if name == "udev-received" and f"/{port}')" in subject and "udev-handled" not in mark:
            mark = {"udev-received": ns}
        elif mark and name not in mark and (
                name in ("turn-start", "turn-facts", "turn-planned")
                or (name == "udev-handled" and f"/{port}')" in subject)
                or (name == "step-issued" and subject == f"usb:{port}")
                or (name == "attach-call" and "step-issued" in mark)):
            mark[name] = ns
            if name == "attach-call":
                for start, end, what in STRETCHES:
                    if start in mark and end in mark:
                        out[what].append((mark[end] - mark[start]) / 1e9)
                mark = {}
        elif mark and name == "turn-end" and "step-issued" not in mark:
            mark = {}  # a turn that planned no attach of it (its remove, a bind): no plug
    return out


def measure(l1: harness.Lab, phyllod: LabPhyllod, plugs: int,
            progress: Callable[[str], None] = lambda _line: None,
            trace: bool = False) -> Latency:
    """``plugs`` plugs of each tool, interleaved. L1 is left without the watcher,
    the script's udev rule, phyllod or a bench device (L2 stays defined)."""
    l1.write_file("/tmp/watch.py", WATCHER)
    l1.check("rm -f /tmp/watch.log /tmp/baseline.log; "
             "nohup python3 /tmp/watch.py > /tmp/watch.log 2>&1 & echo $! > /tmp/watch.pid")
    try:
        l1.wait_for(lambda: "ready" in l1.check("cat /tmp/watch.log"), 60, "watcher")
        l1.write_file("/usr/local/bin/baseline-hotplug", SCRIPT)
        l1.check("chmod +x /usr/local/bin/baseline-hotplug")
        l1.write_file(RULE_PATH, UDEV_RULE)
        l1.check("udevadm control --reload")
        if trace:
            l1.check(f"mkdir -p {shlex.quote(os.path.dirname(TRACE_DROP_IN))}")
            # ProtectSystem=strict leaves /run read-only: the trace gets a runtime
            # directory of its own, kept when phyllod stops so it can be read.
            l1.write_file(TRACE_DROP_IN, "[Service]\nRuntimeDirectory=phyllod\n"
                          "RuntimeDirectoryPreserve=yes\n"
                          f"Environment=PHYLLOD_TRACE={TRACE_FILE}\n")
            l1.check(f"rm -f {TRACE_FILE}")
            l1.check("systemctl daemon-reload")
        phyllod.start(POLICY)
        offset = clock_offset(l1)
        out = Latency()
        for i in range(plugs):
            for name, serial, port in TOOLS:
                added, removed = plug_once(l1, serial, port, offset)
                out.add[name].append(added)
                out.remove[name].append(removed)
                progress(f"plug {i + 1:2}/{plugs} {name:8}: add→live {added:.3f} s, "
                         f"del→gone {removed:.3f} s")
            offset = clock_offset(l1)
        after = f"--after-cursor='{phyllod.cursor}' " if phyllod.cursor else ""
        journal = [json.loads(line) for line in l1.check(
            f"journalctl -u phyllod {after}-o json --no-pager").splitlines()]
        out.phyllod_issued, out.phyllod_returned = phyllod_share(journal)
        out.baseline_handler = baseline_share(l1.check("cat /tmp/baseline.log"))
        if trace:
            out.stretches = trace_stretches(l1.check(f"cat {TRACE_FILE}"), f"1-{PHYLLOD_PORT}")
        return out
    finally:
        with contextlib.suppress(Exception):  # a plug cut short: its device goes too
            l1.qmp("device_del", id="bench")
        phyllod.stop()
        l1.run(f"rm -f {RULE_PATH} {TRACE_DROP_IN} {TRACE_FILE}; udevadm control --reload; "
               "systemctl daemon-reload; kill $(cat /tmp/watch.pid)")


def table(result: Latency, plugs: int) -> list[str]:
    """The report's lines: medians, and phyllod / script (below 1: phyllod is faster;
    issue 18's goals are ≤ 0.7 for the plug, ≤ 0.5 for the unplug)."""
    m = result.medians_ms()

    def cell(value: float | None) -> str:
        return f"{value:.0f}" if value is not None else "-"

    def ratio(phyllod: float | None, baseline: float | None) -> str:
        return f"{phyllod / baseline:.2f}x" if phyllod and baseline else "-"

    return [
        f"lab latency, medians over {plugs} plugs each, interleaved, one L1 (TCG)",
        "| ms, median | udev+virsh | phyllod | phyllod / script |",
        "|---|---:|---:|---:|",
        f"| QMP device_add → L2's QEMU holds it | {cell(m['add_baseline'])} | "
        f"{cell(m['add_phyllod'])} | {ratio(m['add_phyllod'], m['add_baseline'])} |",
        f"| QMP device_del → L2's QEMU released it | {cell(m['del_baseline'])} | "
        f"{cell(m['del_phyllod'])} | {ratio(m['del_phyllod'], m['del_baseline'])} |",
        f"| handler start → attach returned | {cell(m['baseline_handler'])} | "
        f"{cell(m['phyllod_returned'])} | |",
        f"| phyllod: udev event → libvirt call issued | | {cell(m['phyllod_issued'])} | |",
    ]
