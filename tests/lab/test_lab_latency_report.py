"""CI's latency report: a few plugs of phyllod and of udev + virsh, printed at the end.

A regression in plug → live is seen in the run that brought it, not at the
next manual bench. Times on a shared CI machine under TCG vary too much to
assert (bench/lab_latency.py, run on purpose, gives the figures to quote);
this test asserts only that every plug was measured, and the lab conftest's
terminal summary prints the medians and ratios (tests/lab/support/latency.py).
"""

from __future__ import annotations

import latency
import pytest
from lab_phyllod import LabPhyllod

pytestmark = pytest.mark.lab

#: Plugs of each tool. A plug and unplug of both took 10-25 s under TCG on a loaded
#: 2-CPU machine, so three cost one to two minutes of the lab's run.
PLUGS = 3


def test_latency_report(lab_phyllod: LabPhyllod):
    result = latency.measure(lab_phyllod.lab, lab_phyllod, PLUGS)
    latency.REPORTS.append(latency.table(result, PLUGS))
    counts = [len(v) for v in (*result.add.values(), *result.remove.values())]
    assert counts == [PLUGS] * 4
    assert len(result.phyllod_issued) == len(result.baseline_handler) == PLUGS
