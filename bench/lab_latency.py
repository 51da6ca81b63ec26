"""Lab latency: QMP ``device_add`` into L1 → the device live in L2's QEMU.

phyllod against the baseline most users run today (a udev rule whose shell
script calls ``virsh attach-device``), in one run on one L1, interleaved plug
by plug so both see the same load. Each handles only its own device: QEMU's
HID devices all say 0627:0001, so they are told apart by serial number.

"Live in L2" is libvirt's DEVICE_ADDED event for L2, recorded in L1 by a
small watcher; L1's clock is mapped to ours through the guest agent's
``guest-get-time`` (offset from the round trip with the smallest delay).

A report, not a test: ``.venv/bin/python bench/lab_latency.py [--plugs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lab" / "support"))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "support"))  # policies

import lab as harness  # noqa: E402
from lab_phyllod import L2, LabPhyllod, wait_until  # noqa: E402

PHYLLOD_SERIAL, PHYLLOD_PORT = "phyllod-bench", 1
BASELINE_SERIAL, BASELINE_PORT = "baseline-bench", 2

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
        if "plugged in (udev add)" in msg:
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


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f}" if values else "      -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugs", type=int, default=10)
    args = parser.parse_args()
    why = harness.unavailable()
    if why:
        print(f"lab unavailable: {why}")
        return 1
    image = harness.build_image(Path(os.environ.get("PHYLLOD_LAB_CACHE",
                                                    "/var/tmp/phyllod-lab")))
    with harness.Lab(image) as l1:
        l1.define_l2(L2)
        l1.write_file("/tmp/watch.py", WATCHER)
        l1.check("nohup python3 /tmp/watch.py > /tmp/watch.log 2>&1 &")
        l1.wait_for(lambda: "ready" in l1.check("cat /tmp/watch.log"), 60, "watcher")
        l1.write_file("/usr/local/bin/baseline-hotplug", SCRIPT)
        l1.check("chmod +x /usr/local/bin/baseline-hotplug")
        l1.write_file("/etc/udev/rules.d/90-baseline.rules", UDEV_RULE)
        l1.check("udevadm control --reload")
        phyllod = LabPhyllod(l1)
        phyllod.start(POLICY)
        offset = clock_offset(l1)
        results: dict[str, list[tuple[float, float]]] = {"phyllod": [], "baseline": []}
        for i in range(args.plugs):
            for name, serial, port in (("phyllod", PHYLLOD_SERIAL, PHYLLOD_PORT),
                                       ("baseline", BASELINE_SERIAL, BASELINE_PORT)):
                results[name].append(plug_once(l1, serial, port, offset))
                print(f"plug {i + 1:2}/{args.plugs} {name:8}: "
                      f"add→live {results[name][-1][0]:.3f} s, "
                      f"del→gone {results[name][-1][1]:.3f} s", flush=True)
            offset = clock_offset(l1)
        journal = [json.loads(line) for line in l1.check(
            "journalctl -u phyllod -o json --no-pager").splitlines()]
        issued, returned = phyllod_share(journal)
        base = baseline_share(l1.check("cat /tmp/baseline.log"))
        phyllod.stop()
    add_p = [a for a, _ in results["phyllod"]]
    add_b = [a for a, _ in results["baseline"]]
    del_p = [d for _, d in results["phyllod"]]
    del_b = [d for _, d in results["baseline"]]
    print(f"\nlab latency, medians over {args.plugs} plugs each, interleaved, one L1 (TCG)")
    print("| ms, median                              | udev+virsh | phyllod | ratio |")
    print("|---|---|---|---|")
    print(f"| QMP device_add → L2's QEMU holds it     | {median_ms(add_b)}    | "
          f"{median_ms(add_p)} | {statistics.median(add_b) / statistics.median(add_p):.2f}x |")
    print(f"| QMP device_del → L2's QEMU released it  | {median_ms(del_b)}    | "
          f"{median_ms(del_p)} | {statistics.median(del_b) / statistics.median(del_p):.2f}x |")
    print(f"| handler start → attach returned         | {median_ms(base)}    | "
          f"{median_ms(returned)} |       |")
    print(f"| phyllod: udev event → libvirt call issued |          | {median_ms(issued)} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
