"""What must outlive the process: a person's choices, in the state directory.

Manual overrides and remembered answers (ask mode) are kept in one file each.
Everything else phyllod knows is read back from udev and libvirt at start;
only a person's explicit choices have no other home. The file is replaced
atomically (write a temporary file, fsync, rename, fsync the directory), so a
crash or a full disk leaves either the old or the new version, never half;
what a crash leaves of the temporary file is removed at the next start. Saves
run on a worker thread (StateWriter), off the event loop.

Reading trusts nothing at the path: a FIFO, a symlink (to /etc/shadow or
anywhere), a directory, a file of gigabytes, JSON nested a million deep or of
the wrong shape is set aside (renamed ``NAME.broken-TIME``) with one log line,
and phyllod starts without those choices rather than not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from phyllod.core.model import Override, OverrideKind
from phyllod.host.safe_read import FileRefused, read_regular_file

log = logging.getLogger("phyllod")

OVERRIDES_FILE = "overrides.json"
ANSWERS_FILE = "answers.json"
_VERSION = 1
#: Bytes a state file may have. One entry is about 250 bytes (an identity with a
#: serial, a guest name, the device's description) and at most about 1 KiB with the
#: longest strings udev passes (256 characters each), so 4 MiB holds the choices
#: for 4,000 devices at worst and some 16,000 as they usually are, and parsing it
#: costs tens of MB; a larger file was not written by phyllod (a save refuses to
#: write one), and reading it whole could take gigabytes.
MAX_STATE_BYTES = 4 << 20
#: Characters of an identity or a guest name in an entry (phyllod writes < 300).
MAX_TEXT = 1024
#: What tempfile.mkstemp(prefix=".NAME.") leaves when phyllod dies before the rename.
_LEFTOVER = re.compile(rf"^\.(?:{re.escape(OVERRIDES_FILE)}|{re.escape(ANSWERS_FILE)})"
                       r"\.[a-z0-9_]{8}$")
T = TypeVar("T")


class StateError(Exception):
    """The state directory cannot be written; the message says why."""


class _Unusable(Exception):
    """A state file that cannot be used; the message (bounded, no file content) says why."""


def _text(entry: dict[str, Any], key: str, index: int, empty: bool = True) -> str:
    """An entry's string field, checked: a string, printable, bounded."""
    value = entry.get(key, "")
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable() \
            or not (empty or value):
        raise _Unusable(f"entry {index + 1}: '{key}' is not a {'' if empty else 'non-empty '}"
                        f"line of text of at most {MAX_TEXT} characters")
    return value


def _parse(raw: bytes, key: str) -> list[dict[str, Any]]:
    """The entries of a state file's bytes: a version-1 object with a list of objects."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _Unusable(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") \
            from None
    except json.JSONDecodeError as e:
        raise _Unusable(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise _Unusable("JSON nested too deeply") from None
    except ValueError:  # int()'s limit on a number's digits
        raise _Unusable("a number too long to read") from None
    except MemoryError:
        raise _Unusable("too large to parse") from None
    if not isinstance(data, dict):
        raise _Unusable(f"not a JSON object but a {type(data).__name__}")
    version = data.get("version")
    if type(version) is not int or version != _VERSION:
        raise _Unusable(f"'version' is not {_VERSION}")
    entries = data.get(key)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _Unusable(f"'{key}' is not a list of objects")
    return entries


def _set_aside(path: Path, why: str, key: str) -> None:
    """Rename a bad state file out of the way (never overwrite a person's choices,
    never follow it: it may be a symlink to anything), and say so in one line."""
    aside = path.with_name(f"{path.name}.broken-{int(time.time())}")
    n = 0
    while os.path.lexists(aside):
        n += 1
        aside = path.with_name(f"{path.name}.broken-{int(time.time())}-{n}")
    try:
        path.rename(aside)
    except OSError as e:
        log.error("cannot read %s (%s); cannot set it aside either (%s): starting without "
                  "its %s", path, why, e.strerror or e, key)
        return
    log.error("cannot read %s (%s); set aside as %s, starting without its %s",
              path, why, aside.name, key)


def _load_entries(path: Path, key: str,
                  convert: Callable[[dict[str, Any], int], tuple[str, T]]) -> dict[str, T]:
    """The entries of one state file, converted; an unusable file is set aside, never
    overwritten (a bad entry makes the whole file unusable: no half-read choices).

    Whatever is at the path, reading it neither blocks nor follows a symlink nor
    takes more than MAX_STATE_BYTES (safe_read), and no content raises.
    """
    try:
        raw = read_regular_file(path, MAX_STATE_BYTES, follow_symlinks=False)
        entries = _parse(raw, key)
        return dict(convert(e, i) for i, e in enumerate(entries))
    except FileNotFoundError:
        return {}
    except FileRefused as e:
        why = f"it is {e}"
    except _Unusable as e:
        why = str(e)
    _set_aside(path, why, key)
    return {}


def remove_leftovers(state_dir: Path) -> int:
    """Remove the temporary files of saves a crash cut short (before their rename);
    the state files themselves are whole either way. Called once at start."""
    try:
        names = [e.name for e in os.scandir(state_dir)
                 if _LEFTOVER.match(e.name) and e.is_file(follow_symlinks=False)]
    except OSError:
        return 0  # no state directory yet, or unreadable: loading says so
    removed = 0
    for name in names:
        try:
            os.unlink(state_dir / name)
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("cannot remove %s in %s, left by an interrupted save: %s",
                        name, state_dir, e.strerror or e)
            continue
        removed += 1
    if removed:
        log.info("removed %d temporary files in %s left by interrupted saves", removed,
                 state_dir)
    return removed


def _override(e: dict[str, Any], i: int) -> tuple[str, Override]:
    try:
        kind = OverrideKind(e.get("kind"))
    except (ValueError, TypeError):
        raise _Unusable(f"entry {i + 1}: 'kind' is not one of "
                        f"{', '.join(k.value for k in OverrideKind)}") from None
    return _text(e, "identity", i, empty=False), Override(kind, _text(e, "guest", i))


def load_overrides(state_dir: Path) -> dict[str, Override]:
    """The saved manual overrides, by device identity."""
    return _load_entries(state_dir / OVERRIDES_FILE, "overrides", _override)


def save_overrides(state_dir: Path, overrides: Mapping[str, Override],
                   notes: Mapping[str, str]) -> None:
    """Replace the overrides file; ``notes`` (identity → device description) help a reader."""
    entries = [{"identity": identity, "kind": str(o.kind), "guest": o.guest,
                "device": notes.get(identity, "")}
               for identity, o in sorted(overrides.items())]
    _replace(state_dir, OVERRIDES_FILE, {"version": _VERSION, "overrides": entries})


def load_answers(state_dir: Path) -> dict[str, str]:
    """The remembered answers: device identity → guest, "" for the host."""
    return _load_entries(state_dir / ANSWERS_FILE, "answers", lambda e, i: (
        _text(e, "identity", i, empty=False), _text(e, "guest", i)))


def save_answers(state_dir: Path, answers: Mapping[str, str], notes: Mapping[str, str]) -> None:
    """Replace the remembered answers file (``notes`` as for overrides)."""
    entries = [{"identity": identity, "guest": guest, "device": notes.get(identity, "")}
               for identity, guest in sorted(answers.items())]
    _replace(state_dir, ANSWERS_FILE, {"version": _VERSION, "answers": entries})


def _replace(state_dir: Path, name: str, data: dict[str, Any]) -> None:
    """Write ``data`` as ``name`` atomically (see the module docstring)."""
    text = json.dumps(data, indent=2) + "\n"
    if len(text.encode("utf-8")) > MAX_STATE_BYTES:
        # Written, it would be set aside at the next start: refuse it now instead.
        raise StateError(f"cannot save {name} in {state_dir}: {len(text)} bytes "
                         f"are more than the {MAX_STATE_BYTES >> 20} MiB a state file may hold")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=state_dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, state_dir / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise StateError(f"cannot save {name} in {state_dir}: {e.strerror or e}") from e


class StateWriter:
    """Saves the state files on one worker thread, in the order they were asked for.

    fsync can take seconds on a slow or busy disk; run on the event loop it held
    every bus answer meanwhile. One worker runs the saves one after the other,
    so a later save is never overtaken by an earlier one, and the caller awaits
    its own save: a failure reaches it as StateError, as it did before.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phyllod-state")

    def save_overrides(self, overrides: Mapping[str, Override],
                       notes: Mapping[str, str]) -> asyncio.Future[None]:
        return self._run(save_overrides, overrides, notes)

    def save_answers(self, answers: Mapping[str, str],
                     notes: Mapping[str, str]) -> asyncio.Future[None]:
        return self._run(save_answers, answers, notes)

    def _run(self, save: Callable[..., None], *args: Any) -> asyncio.Future[None]:
        """Queue the save now (its place in line is taken at the call, not when a
        task first runs), and hand back what to await for its outcome."""
        return asyncio.get_running_loop().run_in_executor(self._worker, save, self.state_dir,
                                                          *args)
