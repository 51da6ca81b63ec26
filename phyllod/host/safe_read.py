"""Read a file phyllod depends on, whatever sits at its path: bounded, never blocking.

A policy drop-in or a state file is expected to be a small regular file, but
the path may hold anything a mistake or a hostile process put there: a FIFO
(a plain ``open`` waits forever for a writer), a socket, a device node (an
``open`` can rewind a tape or hang up a line), a directory, a symlink that
leads nowhere or in a circle, a file of gigabytes. Each is refused with what
it is, so the caller can report it (a policy problem, a state file set aside).

The type is read with ``stat`` before anything is opened (a device node is
never opened), the open is non-blocking and never makes a terminal ours
(``O_NONBLOCK | O_NOCTTY``), and ``fstat`` on the open descriptor checks again,
so a path swapped between the two calls is still caught. At most ``limit + 1``
bytes are read, whatever ``st_size`` claims.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_CHUNK = 1 << 16


class FileRefused(Exception):
    """The path holds something that is not a readable regular file of bounded size.

    ``str()`` says what it is ("a FIFO", "a dangling symlink", "too large ..."),
    in words short and free of the path, so callers put it beside a name they
    format themselves.
    """


def kind_of(mode: int) -> str:
    """What an ``st_mode`` is, in words ("" for a regular file)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "" if stat.S_ISREG(mode) else "not a regular file"


def _refusal(e: OSError, path: Path, follow_symlinks: bool) -> OSError | FileRefused:
    """The OSError of a stat or an open, as what the caller should see."""
    if e.errno == errno.ENOENT:
        if follow_symlinks and os.path.islink(path):
            return FileRefused("a dangling symlink")
        return e  # nothing there: the caller decides whether that is normal
    if e.errno == errno.ELOOP:
        return FileRefused("a symlink loop" if follow_symlinks else "a symlink")
    return FileRefused(f"unreadable ({e.strerror or e})")


def read_regular_file(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Raises FileNotFoundError when nothing is at ``path`` (not even a symlink),
    FileRefused for anything else that is not a readable regular file of at
    most ``limit`` bytes. With ``follow_symlinks=False`` a symlink in the last
    component is refused (``O_NOFOLLOW``) instead of followed.
    """
    try:
        kind = kind_of(os.stat(path, follow_symlinks=follow_symlinks).st_mode)
    except OSError as e:
        raise _refusal(e, path, follow_symlinks) from None
    if kind:
        raise FileRefused(kind)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise _refusal(e, path, follow_symlinks) from None
    try:
        st = os.fstat(fd)
        kind = kind_of(st.st_mode)
        if kind:
            raise FileRefused(kind)
        if st.st_size > limit:
            raise FileRefused(too_large(st.st_size, limit))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(too_large(size, limit, grew=True))
        return b"".join(chunks)
    except OSError as e:
        raise FileRefused(f"unreadable ({e.strerror or e})") from None
    finally:
        os.close(fd)


def too_large(size: int, limit: int, grew: bool = False) -> str:
    """The words for a file over ``limit`` bytes."""
    amount = f"more than {limit} bytes" if grew else f"{size} bytes"
    return f"too large ({amount}; at most {_bytes(limit)})"


def _bytes(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
