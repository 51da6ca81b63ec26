"""What must outlive the process: a person's choices, in the state directory.

Manual overrides and remembered answers (ask mode) are kept in one file each.
Everything else phyllod knows is read back from udev and libvirt at start;
only a person's explicit choices have no other home. The file is replaced
atomically (write a temporary file, fsync, rename, fsync the directory), so a
crash or a full disk leaves either the old or the new version, never half.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from phyllod.model import Override, OverrideKind

log = logging.getLogger("phyllod")

OVERRIDES_FILE = "overrides.json"
ANSWERS_FILE = "answers.json"
_VERSION = 1
T = TypeVar("T")


class StateError(Exception):
    """The state directory cannot be written; the message says why."""


def _load_entries(path: Path, key: str,
                  convert: Callable[[dict[str, Any]], tuple[str, T]]) -> dict[str, T]:
    """The entries of one state file, converted; an unreadable file is set aside, never
    overwritten (a bad entry makes the whole file unreadable: no half-read choices)."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != _VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        entries = data[key]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"'{key}' is not a list of objects")
        return dict(convert(e) for e in entries)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        aside = path.with_name(f"{path.name}.broken-{int(time.time())}")
        with contextlib.suppress(OSError):
            path.rename(aside)
        log.error("cannot read %s (%s); set aside as %s, starting without its %s",
                  path, e, aside.name, key)
        return {}


def load_overrides(state_dir: Path) -> dict[str, Override]:
    """The saved manual overrides, by device identity."""
    return _load_entries(state_dir / OVERRIDES_FILE, "overrides", lambda e: (
        str(e["identity"]), Override(OverrideKind(e["kind"]), str(e.get("guest", "")))))


def save_overrides(state_dir: Path, overrides: Mapping[str, Override],
                   notes: Mapping[str, str]) -> None:
    """Replace the overrides file; ``notes`` (identity → device description) help a reader."""
    entries = [{"identity": identity, "kind": str(o.kind), "guest": o.guest,
                "device": notes.get(identity, "")}
               for identity, o in sorted(overrides.items())]
    _replace(state_dir, OVERRIDES_FILE, {"version": _VERSION, "overrides": entries})


def load_answers(state_dir: Path) -> dict[str, str]:
    """The remembered answers: device identity → guest, "" for the host."""
    return _load_entries(state_dir / ANSWERS_FILE, "answers", lambda e: (
        str(e["identity"]), str(e.get("guest", ""))))


def save_answers(state_dir: Path, answers: Mapping[str, str], notes: Mapping[str, str]) -> None:
    """Replace the remembered answers file (``notes`` as for overrides)."""
    entries = [{"identity": identity, "guest": guest, "device": notes.get(identity, "")}
               for identity, guest in sorted(answers.items())]
    _replace(state_dir, ANSWERS_FILE, {"version": _VERSION, "answers": entries})


def _replace(state_dir: Path, name: str, data: dict[str, Any]) -> None:
    """Write ``data`` as ``name`` atomically (see the module docstring)."""
    text = json.dumps(data, indent=2) + "\n"
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
