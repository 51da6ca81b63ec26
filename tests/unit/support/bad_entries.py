"""Directory entries that are not what a reader expects, made at a path on demand.

Shared by the policy-entry and state-file tests, unit and integration: each
kind is a function that makes it at ``path`` (a symlink's target or loop partner
goes beside it, under a name that does not end in ``.toml`` or ``.json``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path


def dangling_symlink(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere")


def symlink_loop(path: Path) -> None:
    path.symlink_to(path.with_name("partner"))
    path.with_name("partner").symlink_to(path)


def fifo(path: Path) -> None:
    os.mkfifo(path)


def unix_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the socket file stays; nobody listens


def directory(path: Path) -> None:
    path.mkdir()


def device_node(path: Path) -> None:
    path.symlink_to("/dev/null")


def huge(path: Path) -> None:
    """4 GiB, sparse: only a reader that believes st_size or reads to the end suffers."""
    with path.open("wb") as f:
        f.truncate(4 << 30)


KINDS: dict[str, Callable[[Path], None]] = {
    "dangling symlink": dangling_symlink, "symlink loop": symlink_loop, "FIFO": fifo,
    "socket": unix_socket, "directory": directory, "device node": device_node, "huge": huge,
}
