"""systemd/phyllod.service: resource limits and restarts that never give up.

Issue 16: a crash loop (any local user could once cause one over the bus) hit
systemd's default start limit (5 starts in 10 s) and left the unit failed for
good. The unit now has no start limit, paces restarts with RestartSec=, and
bounds memory and tasks; ``systemd-analyze verify`` (where installed) must
know every key, since systemd ignores an unknown one with only a warning.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "phyllod.service"


def _keys() -> dict[str, dict[str, list[str]]]:
    """Section → key → values (a key may be repeated, as SystemCallFilter= is)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
            sections[section] = {}
            continue
        key, _, value = line.partition("=")
        sections[section].setdefault(key, []).append(value)
    return sections


def test_a_crash_loop_never_leaves_the_unit_failed_for_good():
    keys = _keys()
    assert keys["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert keys["Service"]["Restart"] == ["on-failure"]
    assert keys["Service"]["RestartSec"] == ["5s"]


def test_memory_and_tasks_are_bounded():
    service = _keys()["Service"]
    assert service["MemoryHigh"] == ["384M"] and service["MemoryMax"] == ["512M"]
    assert service["TasksMax"] == ["64"]


def test_systemd_knows_every_key(tmp_path: Path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The binary and the man pages are not installed here: point at what is.
    text = UNIT.read_text().replace("ExecStart=/usr/bin/phyllod", "ExecStart=/bin/true")
    text = re.sub(r"^Documentation=.*$", "", text, flags=re.M)
    unit = tmp_path / "phyllod.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60, check=False)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if "phyllod.service:" in ln and re.search(r"Unknown|Invalid|Failed to parse", ln)]
    assert problems == [], r.stdout + r.stderr
