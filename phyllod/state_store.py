"""What must outlive the process: manual overrides, in the state directory.

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
from collections.abc import Mapping
from pathlib import Path

from phyllod.model import Override, OverrideKind

log = logging.getLogger("phyllod")

OVERRIDES_FILE = "overrides.json"
_VERSION = 1


class StateError(Exception):
    """The state directory cannot be written; the message says why."""


def load_overrides(state_dir: Path) -> dict[str, Override]:
    """The saved overrides; an unreadable file is set aside, never silently overwritten."""
    path = state_dir / OVERRIDES_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("version") != _VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        return {entry["identity"]: Override(OverrideKind(entry["kind"]), entry.get("guest", ""))
                for entry in data["overrides"]}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        aside = path.with_name(f"{OVERRIDES_FILE}.broken-{int(time.time())}")
        with contextlib.suppress(OSError):
            path.rename(aside)
        log.error("cannot read %s (%s); set aside as %s, starting without overrides",
                  path, e, aside.name)
        return {}


def save_overrides(state_dir: Path, overrides: Mapping[str, Override],
                   notes: Mapping[str, str]) -> None:
    """Replace the overrides file; ``notes`` (identity → device description) help a reader."""
    entries = [{"identity": identity, "kind": str(o.kind), "guest": o.guest,
                "device": notes.get(identity, "")}
               for identity, o in sorted(overrides.items())]
    text = json.dumps({"version": _VERSION, "overrides": entries}, indent=2) + "\n"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{OVERRIDES_FILE}.", dir=state_dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, state_dir / OVERRIDES_FILE)
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
        raise StateError(f"cannot save overrides in {state_dir}: {e.strerror or e}") from e
