"""The state files: a person's choices survive, a damaged file is set aside whole.

Issue 16 §3: whatever sits at ``overrides.json`` or ``answers.json`` (a FIFO, a
symlink to a secret, a directory, gigabytes, JSON nested a million deep, the
wrong shape), loading neither blocks nor raises nor follows it: the file is set
aside with one log line. Saves run on one worker thread, in order.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hangs import within

from phyllod.core.model import Override, OverrideKind
from phyllod.host import state_store
from phyllod.host.state_store import (
    StateError,
    StateWriter,
    load_answers,
    load_overrides,
    remove_leftovers,
    save_answers,
    save_overrides,
)

LOADERS = {"overrides.json": load_overrides, "answers.json": load_answers}


def test_round_trip_of_overrides_and_answers(tmp_path):
    save_overrides(tmp_path, {"usb:1-2": Override(OverrideKind.ATTACH, "work")}, {})
    save_answers(tmp_path, {"usb:1050:0407:K1602738": "", "usb:1-3": "media"},
                 {"usb:1-3": "usb:1-3 (0627:0001)"})
    assert load_overrides(tmp_path) == {"usb:1-2": Override(OverrideKind.ATTACH, "work")}
    assert load_answers(tmp_path) == {"usb:1050:0407:K1602738": "", "usb:1-3": "media"}
    saved = json.loads((tmp_path / "answers.json").read_text())
    assert {"identity": "usb:1-3", "guest": "media", "device": "usb:1-3 (0627:0001)"} \
        in saved["answers"]


def test_a_file_with_one_bad_entry_is_set_aside_not_half_read(tmp_path):
    (tmp_path / "overrides.json").write_text(json.dumps({"version": 1, "overrides": [
        {"identity": "usb:1-2", "kind": "host"}, {"identity": "usb:1-3", "kind": "bogus"}]}))
    (tmp_path / "answers.json").write_text('{"version": 1, "answers": [{"guest": "x"}]}')
    assert load_overrides(tmp_path) == {}
    assert load_answers(tmp_path) == {}
    names = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert names == ["answers.json.broken", "overrides.json.broken"]


# ---------------------------------------------------------------- every kind of bad file

SECRET = '{"version": 1, "overrides": [{"identity": "usb:1-2", "kind": "host"}]}'


def _symlink_to_secret(p: Path) -> None:
    """A symlink to a root-only file (as /etc/shadow is) that even parses: refused
    all the same, since following it lets whoever made the link choose the content."""
    secret = p.parent.parent / "shadow"
    secret.write_text(SECRET.replace("overrides", p.stem))
    secret.chmod(0o600)
    p.symlink_to(secret)


def _socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()  # the socket file stays


def _huge(p: Path) -> None:
    with p.open("wb") as f:
        f.truncate(1 << 30)  # sparse


def _text(text: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(text.replace("KEY", p.stem))


#: Each bad state file, and the reason its log line gives.
BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "FIFO": (lambda p: os.mkfifo(p), "it is a FIFO"),
    "symlink to a secret": (_symlink_to_secret, "it is a symlink"),
    "dangling symlink": (lambda p: p.symlink_to("/nonexistent"), "it is a symlink"),
    "directory": (lambda p: p.mkdir(), "it is a directory"),
    "socket": (_socket, "it is a socket"),
    "huge": (_huge, "it is too large (1073741824 bytes; at most 4 MiB)"),
    "deep nesting": (_text("[" * 200_000 + "]" * 200_000), "JSON nested too deeply"),
    "deep objects": (_text('{"a":' * 200_000 + "1" + "}" * 200_000), "JSON nested too deeply"),
    "invalid UTF-8": (lambda p: p.write_bytes(b'{"version": 1, "\xff": []}'),
                      "not UTF-8 text (byte 0xff at offset 16)"),
    "UTF-16": (lambda p: p.write_text('{"version": 1, "KEY": []}', encoding="utf-16"),
               "not UTF-8 text (byte 0xff at offset 0)"),
    "not JSON": (_text('{"version": 1,'), "not JSON (Expecting property name enclosed in "
                                          "double quotes at line 1 column 15)"),
    "empty": (_text(""), "not JSON (Expecting value at line 1 column 1)"),
    "5000-digit number": (_text('{"version": ' + "1" * 5000 + "}"), "a number too long"),
    "a list": (_text("[]"), "not a JSON object but a list"),
    "no version": (_text('{"KEY": []}'), "'version' is not 1"),
    "version as a string": (_text('{"version": "1", "KEY": []}'), "'version' is not 1"),
    "version true": (_text('{"version": true, "KEY": []}'), "'version' is not 1"),
    "entries not a list": (_text('{"version": 1, "KEY": {}}'), "'KEY' is not a list"),
    "entry not an object": (_text('{"version": 1, "KEY": [1]}'), "'KEY' is not a list"),
    "identity a number": (_text('{"version": 1, "KEY": [{"identity": 5, "kind": "host"}]}'),
                          "entry 1: 'identity' is not a non-empty line of text"),
    "identity empty": (_text('{"version": 1, "KEY": [{"identity": "", "kind": "host"}]}'),
                       "entry 1: 'identity' is not a non-empty line"),
    "identity huge": (_text('{"version": 1, "KEY": [{"identity": "' + "u" * 100_000
                            + '", "kind": "host"}]}'), "entry 1: 'identity' is not"),
    "identity with escapes": (_text('{"version": 1, "KEY": [{"identity": "a\\u001b[2Jb", '
                                    '"kind": "host"}]}'), "entry 1: 'identity' is not"),
    "guest a list": (_text('{"version": 1, "KEY": [{"identity": "usb:1-2", "kind": "attach", '
                           '"guest": ["w"]}]}'), "entry 1: 'guest' is not a line of text"),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
@pytest.mark.parametrize("kind", list(BAD))
def test_every_kind_of_bad_state_file_is_set_aside_with_one_line(
        kind: str, name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    state = tmp_path / "state"
    state.mkdir()
    make, why = BAD[kind]
    path = state / name
    make(path)
    caplog.set_level(logging.INFO, logger="phyllod")
    assert within(10, lambda: LOADERS[name](state)) == {}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    why = why.replace("KEY", path.stem)
    assert lines[0].startswith(f"cannot read {path} ({why}"), lines[0][:300]
    assert "; set aside as " in lines[0] and len(lines[0]) < 600
    (aside,) = [p for p in state.iterdir()]
    assert aside.name.startswith(f"{name}.broken-")
    assert not os.path.lexists(path)
    if kind == "symlink to a secret":
        assert aside.is_symlink()  # the link was moved, never what it points to
        assert (tmp_path / "shadow").read_text() == SECRET.replace("overrides", path.stem)
    # The next save writes a fresh regular file where the bad one was.
    save_answers(state, {"usb:1-2": ""}, {})
    save_overrides(state, {"usb:1-2": Override(OverrideKind.HOST)}, {})
    assert LOADERS[name](state) != {}


def test_a_bad_file_set_aside_twice_in_one_second_keeps_both(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(state_store.time, "time", lambda: 1_700_000_000)
    for text in ("first", "second"):
        (tmp_path / "answers.json").write_text(text)
        assert load_answers(tmp_path) == {}
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["first", "second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "answers.json.broken-1700000000", "answers.json.broken-1700000000-1"]


def test_a_file_that_cannot_be_set_aside_is_still_never_read(tmp_path: Path, monkeypatch,
                                                             caplog: pytest.LogCaptureFixture):
    os.mkfifo(tmp_path / "overrides.json")

    def read_only(self: Path, target: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "rename", read_only)
    assert within(10, lambda: load_overrides(tmp_path)) == {}
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot read {tmp_path}/overrides.json (it is a FIFO); cannot set it aside either "
        "(Read-only file system): starting without its overrides"]


def test_a_save_larger_than_a_load_accepts_is_refused(tmp_path: Path, monkeypatch):
    """Written, it would be set aside at the next start: every choice lost at once."""
    save_answers(tmp_path, {"usb:1-2": "work"}, {})
    before = (tmp_path / "answers.json").read_text()
    monkeypatch.setattr(state_store, "MAX_STATE_BYTES", 1000)
    many = {f"usb:1-{n}": "work" for n in range(100)}
    with pytest.raises(StateError, match=r"cannot save answers.json in .*: \d+ bytes are more "
                                         r"than the 0 MiB a state file may hold"):
        save_answers(tmp_path, many, {})
    assert (tmp_path / "answers.json").read_text() == before
    assert load_answers(tmp_path) == {"usb:1-2": "work"}


def test_leftovers_of_interrupted_saves_are_removed_at_start(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="phyllod")
    save_overrides(tmp_path, {"usb:1-2": Override(OverrideKind.HOST)}, {})
    for name in (".overrides.json.k2j_9xq0", ".answers.json.abcdefgh"):
        (tmp_path / name).write_text('{"version": 1, "ove')  # cut short by a SIGKILL
    kept = [".overrides.json.too_long_1", ".other.abcdefgh", "overrides.json.abcdefgh"]
    for name in kept:
        (tmp_path / name).write_text("not ours")
    (tmp_path / ".answers.json.dirxdirx").mkdir()
    assert remove_leftovers(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*kept, ".answers.json.dirxdirx", "overrides.json"])
    assert [r.getMessage() for r in caplog.records] == [
        f"removed 2 temporary files in {tmp_path} left by interrupted saves"]
    assert remove_leftovers(tmp_path / "missing") == 0
    assert load_overrides(tmp_path) == {"usb:1-2": Override(OverrideKind.HOST)}


# ---------------------------------------------------------------- saves off the loop


class SlowDisk:
    """os.fsync held until released: a disk that takes its time, as a test controls it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.synced: list[str] = []
        self.threads: set[str] = set()
        self._real = os.fsync

    def fsync(self, fd: int) -> None:
        self.threads.add(threading.current_thread().name)
        name = os.readlink(f"/proc/self/fd/{fd}")
        self.entered.set()
        assert self.release.wait(30), "never released"
        self._real(fd)
        self.synced.append(name)


async def test_a_slow_fsync_leaves_the_loop_free_and_saves_stay_in_order(tmp_path: Path,
                                                                         monkeypatch):
    disk = SlowDisk()
    monkeypatch.setattr(os, "fsync", disk.fsync)
    writer = StateWriter(tmp_path)
    first = asyncio.ensure_future(writer.save_answers({"usb:1-2": "work"}, {}))
    await asyncio.get_running_loop().run_in_executor(None, disk.entered.wait, 10)
    # fsync is held; the loop still runs: 1000 turns while the save waits for the disk.
    turns = 0
    for _ in range(1000):
        await asyncio.sleep(0)
        turns += 1
    assert turns == 1000 and not first.done()
    second = asyncio.ensure_future(writer.save_answers({"usb:1-2": "media"}, {}))
    await asyncio.sleep(0.05)
    assert not second.done()  # queued behind the first, never beside it
    disk.release.set()
    await asyncio.gather(first, second)
    assert load_answers(tmp_path) == {"usb:1-2": "media"}  # the later save is the last word
    # Each save fsyncs its temporary file, then the directory: first's two, then second's.
    files = [Path(n).name.split(".")[1] if Path(n).name.startswith(".") else "dir"
             for n in disk.synced]
    assert files == ["answers", "dir", "answers", "dir"]
    assert disk.threads and all(t.startswith("phyllod-state") for t in disk.threads)
    assert threading.current_thread().name not in disk.threads


async def test_a_save_takes_its_place_in_line_when_asked_not_when_awaited(tmp_path: Path):
    """The daemon queues saves nobody awaits (a choice carried to a twin's port) from
    plain functions: their order is the order of the calls, whoever awaits first."""
    writer = StateWriter(tmp_path)
    earlier = writer.save_answers({"usb:1-2": "work"}, {})
    later = writer.save_answers({"usb:1-2": "media"}, {})
    await later
    await earlier
    assert load_answers(tmp_path) == {"usb:1-2": "media"}


async def test_a_failed_save_raises_in_the_caller(tmp_path: Path, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StateError, match=f"cannot save overrides.json in {tmp_path}: "
                                         "No space left on device"):
        await StateWriter(tmp_path).save_overrides({"usb:1-2": Override(OverrideKind.HOST)}, {})
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left either
