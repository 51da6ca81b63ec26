"""The session's lab: L1 built (cached) and booted once, shared by every lab test.

Booting L1 under TCG takes ~20-30 s and a cold image build ~1-2 min, so one
L1 serves the whole session; tests leave it as they found it (unplug what they
plug, define their own L2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

# Lab tests import the harness as a plain module, as tests/conftest.py does for
# tests/unit and tests/integration (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent / "support"))

import lab as lab_harness
import latency
from lab_phyllod import L2, LabPhyllod

DEFAULT_CACHE = "/var/tmp/phyllod-lab"


@pytest.fixture(scope="session")
def lab() -> Iterator[lab_harness.Lab]:
    """L1 booted and ready (qemu-ga answers, libvirtd active); killed at session end.

    Skips, with one reason, where QEMU is missing or cannot run. The image
    cache is $PHYLLOD_LAB_CACHE or /var/tmp/phyllod-lab; PHYLLOD_LAB_KEEP=1
    keeps L1's run directory (serial log, QEMU log) for a post-mortem.
    """
    cache = Path(os.environ.get("PHYLLOD_LAB_CACHE") or DEFAULT_CACHE)
    why = lab_harness.unavailable(cache)
    if why:
        pytest.skip(f"lab unavailable: {why}")
    image = lab_harness.build_image(cache)
    keep = os.environ.get("PHYLLOD_LAB_KEEP") == "1"
    with lab_harness.Lab(image, keep_run_dir=keep) as l1:
        l1.timings.update(image.timings)
        yield l1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed lab test's report carries L1's serial console tail: the first clue."""
    outcome = yield
    report = outcome.get_result()
    l1 = getattr(item, "funcargs", {}).get("lab")
    if report.failed and isinstance(l1, lab_harness.Lab):
        tail = "\n".join(l1.serial_log().splitlines()[-60:])
        report.sections.append((f"L1 serial console (run dir {l1.run_dir})", tail))


@pytest.fixture
def lab_phyllod(lab: Any) -> Iterator[LabPhyllod]:
    """phyllod in L1 with L2 running and holding nothing; reset after each test."""
    if lab.run(f"virsh domstate {L2}")[0] != 0:
        lab.define_l2(L2)
    driver = LabPhyllod(lab)
    driver.reset()
    try:
        yield driver
    finally:
        driver.reset()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The latency report of test_lab_latency_report, in the run's own output (CI's log),
    not only under ``-s``: a short table, no assertion."""
    for lines in latency.REPORTS:
        terminalreporter.section("lab latency (a report, not asserted)")
        for line in lines:
            terminalreporter.write_line(line)
