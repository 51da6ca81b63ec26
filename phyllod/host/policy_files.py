"""Policy files: the drop-in directory and the reading of each file (the policy's I/O).

Which entries are policy files, and which are refused (anything that is not a
readable regular file of bounded size: a FIFO, a device, a dangling symlink),
is decided here; every refusal is a located problem like a syntax error, so a
deny rule cannot vanish with a broken file. The text is handed to
:class:`~phyllod.core.policy_parser.PolicyBuilder`, which holds no I/O.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from phyllod.core.policy import Policy
from phyllod.core.policy_parser import PolicyBuilder
from phyllod.core.policy_problems import PolicyError, Problem
from phyllod.host.safe_read import FileRefused, read_regular_file

DEFAULT_POLICY_DIR = Path("/etc/phyllod/policy.d")

#: Bytes one policy file may have, and all of them together: a hand-written or
#: generated policy of thousands of rules is a few hundred KiB; a log or an image
#: named ``*.toml`` by mistake must not be read whole into memory.
MAX_FILE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 8 << 20
#: Drop-in files a policy may have (their names go onto the bus, PolicyFiles).
MAX_FILES = 1000


def policy_files(directory: Path) -> list[Path]:
    """The drop-in entries of ``directory`` in the order they apply.

    Every entry whose name ends in ``.toml`` is one, whatever it is: load_policy
    refuses those that are not readable regular files, so a deny rule cannot
    vanish with a broken symlink. Hidden entries (``.name.toml``, ``.#name.toml``:
    editors' lock and swap files) are not read, as in systemd's drop-in
    directories; backups (``name.toml~``, ``.dpkg-old``) do not end in ``.toml``.
    A directory that does not exist is an empty policy; one that exists but
    cannot be listed, or is not a directory, raises PolicyError.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        if not os.path.islink(directory):
            return []
        problem = "is a dangling symlink"
    except NotADirectoryError:
        problem = "is not a directory"
    except OSError as e:
        problem = ("is a symlink loop" if e.errno == errno.ELOOP
                   else f"cannot be listed ({e.strerror or e})")
    else:
        return [directory / n for n in sorted(names)
                if n.endswith(".toml") and not n.startswith(".")]
    raise PolicyError([Problem(str(directory), 0, f"the policy directory {problem}")])


def _read_policy_file(path: Path, limit: int) -> tuple[str, int, Problem | None]:
    """The text of one policy file and its size in bytes, or the problem that keeps it
    from being read (the size then counts nothing)."""
    file = str(path)
    if not path.name.isprintable():
        return "", 0, Problem(file, 0, "the file name is not printable UTF-8 text; rename it")
    try:
        raw = read_regular_file(path, limit)
    except FileNotFoundError:
        return "", 0, Problem(file, 0, "does not exist")
    except FileRefused as e:
        why = str(e)
        if not why.startswith(("too large", "unreadable")):
            why += ", not a regular file"
        elif limit < MAX_FILE_BYTES and why.startswith("too large"):
            why = f"too large: the policy files together exceed {MAX_TOTAL_BYTES >> 20} MiB"
        return "", 0, Problem(file, 0, f"is {why}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return "", len(raw), Problem(file, line, f"is not UTF-8 text (byte 0x{raw[e.start]:02x})")
    # Universal newlines, as Path.read_text gave them before.
    return text.replace("\r\n", "\n").replace("\r", "\n"), len(raw), None


def load_policy(paths: Iterable[Path]) -> Policy:
    """Read and check ``paths`` in order; raises PolicyError listing every problem.

    A path that is not a readable regular file (see safe_read) is a problem like
    a syntax error: the policy is refused whole, never read without that file.
    """
    paths = list(paths)
    if len(paths) > MAX_FILES:
        raise PolicyError([Problem(str(paths[MAX_FILES]), 0, f"more than {MAX_FILES} policy "
                                   f"files ({len(paths)}); merge some")])
    builder = PolicyBuilder()
    budget = MAX_TOTAL_BYTES
    for path in paths:
        text, size, problem = _read_policy_file(path, min(MAX_FILE_BYTES, budget))
        budget -= size
        if problem is not None:
            builder.refuse(str(path), problem)
        else:
            builder.add(str(path), text)
    return builder.policy()


def load_policy_dir(directory: Path) -> Policy:
    return load_policy(policy_files(directory))
