"""The trace hook (host/trace): unset it writes nothing; set, one line per point."""

from __future__ import annotations

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
