"""Lab latency: QMP ``device_add`` into L1 → the device live in L2's QEMU.

phyllod against the baseline most users run today (a udev rule whose shell
script calls ``virsh attach-device``), in one run on one L1, interleaved plug
by plug so both see the same load (tests/lab/support/latency.py says how;
CI's lab part runs a few plugs of the same through
tests/lab/test_lab_latency_report.py).

A report, not a test: ``.venv/bin/python bench/lab_latency.py [--plugs N]
[--json FILE]``; the JSON holds every sample, for bench/performance.py.
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
import latency  # noqa: E402
from lab_phyllod import L2, LabPhyllod  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write every sample here")
    parser.add_argument("--trace", action="store_true", help="run phyllod with its trace "
                        "hook and print where its share of each plug went (the hook's "
                        "writes add to the share: measure the figures without it)")
    args = parser.parse_args()
    why = harness.unavailable()
    if why:
        print(f"lab unavailable: {why}")
        return 1
    image = harness.build_image(Path(os.environ.get("PHYLLOD_LAB_CACHE",
                                                    "/var/tmp/phyllod-lab")))
    with harness.Lab(image) as l1:
        l1.define_l2(L2)
        result = latency.measure(l1, LabPhyllod(l1), args.plugs,
                                 lambda line: print(line, flush=True), trace=args.trace)
    print()
    print("\n".join(latency.table(result, args.plugs)))
    if result.stretches:
        print("\nphyllod's share in L1, from its trace (ms, median of the plugs seen whole)")
        for what, values in result.stretches.items():
            shown = f"{statistics.median(values) * 1e3:7.1f}" if values else "      -"
            print(f"  {shown}  {what} ({len(values)} plugs)")
    if args.json:
        args.json.write_text(json.dumps({
            "bench": "lab_latency", "plugs": args.plugs,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "samples": result.as_json(), "medians_ms": result.medians_ms()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
