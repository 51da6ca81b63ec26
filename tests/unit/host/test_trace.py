"""The trace hook (host/trace): unset it writes nothing; set, one line per point."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from phyllod.host import trace


class Loud:
    """A subject that counts how often it was formatted."""

    def __init__(self) -> None:
        self.formatted = 0

    def __str__(self) -> str:
        self.formatted += 1
        return "usb:1-2"


@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "trace"
    monkeypatch.setattr(trace, "_PATH", str(path))
    monkeypatch.setattr(trace, "_fd", -1)
    return path


def test_unset_it_neither_formats_nor_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trace, "_PATH", "")
    subject = Loud()
    for _ in range(100):
        trace.point("udev-received", subject)
    assert subject.formatted == 0
    assert trace._fd == -1  # nothing was opened
    assert list(tmp_path.iterdir()) == []


def test_set_each_point_is_one_line_of_three_fields(traced: Path):
    trace.point("udev-received", Loud())
    trace.point("turn-start", 7)
    trace.point("turn-end")
    lines = [line.split(" ") for line in traced.read_text().splitlines()]
    assert [fields[1:] for fields in lines] == [
        ["udev-received", "usb:1-2"], ["turn-start", "7"], ["turn-end", "-"]]
    stamps = [int(fields[0]) for fields in lines]
    assert stamps == sorted(stamps)


def test_lines_from_two_threads_never_interleave(traced: Path):
    def mark(name: str) -> None:
        for i in range(500):
            trace.point(name, i)

    threads = [threading.Thread(target=mark, args=(n,)) for n in ("attach-call", "turn-end")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = traced.read_text().splitlines()
    assert len(lines) == 1000
    assert all(len(line.split(" ")) == 3 for line in lines)


def test_an_unwritable_trace_costs_the_caller_nothing(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trace, "_PATH", str(tmp_path / "missing" / "trace"))
    monkeypatch.setattr(trace, "_fd", -1)
    trace.point("turn-start", 1)  # no exception
    assert not (tmp_path / "missing").exists()


def test_set_at_start_the_collectors_pauses_are_points(tmp_path: Path):
    """A daemon started with PHYLLOD_TRACE marks each garbage collection, so a pause
    that falls into a plug shows in the trace; started without it, none is hooked."""
    path = tmp_path / "trace"
    code = ("import gc; from phyllod.host import trace; "
            "print(trace._collected in gc.callbacks); gc.collect(2)")
    for value, hooked in ((str(path), "True"), ("", "False")):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PHYLLOD_TRACE": value}, check=True)
        assert run.stdout.strip() == hooked
    points = [line.split(" ")[1:] for line in path.read_text().splitlines()]
    assert ["gc-start", "2"] in points and ["gc-stop", "2"] in points
