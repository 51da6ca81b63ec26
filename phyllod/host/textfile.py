"""The metrics file node_exporter's textfile collector reads, replaced atomically.

node_exporter reads every ``*.prom`` in its directory at each scrape: a file
half written would be scraped half (or refused as a parse error), so the text
goes to a temporary file in the same directory (``.NAME.tmp``: not ``*.prom``,
never read), is fsynced and renamed over the file. The directory may be
writable by others than root (a ``prometheus`` group on some hosts): the
temporary file is created with ``O_EXCL | O_NOFOLLOW`` relative to the
directory's descriptor, so a symlink planted at its name is refused, never
followed, and ``rename`` replaces whatever sits at the file's name (a symlink
included) without following it. The mode is 0644 whatever the umask
(phyllod's unit sets 0077): node_exporter runs as another user.

A missing or unwritable directory costs one warning, until a write succeeds
again: metrics are no reason to stop serving devices.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("phyllod")

#: Debian's prometheus-node-exporter reads this directory (--collector.textfile.directory).
NODE_EXPORTER_DIR = Path("/var/lib/prometheus/node-exporter")
DEFAULT_NAME = "phyllod.prom"
MODE = 0o644


def default_path() -> Path | None:
    """Where the metrics go when no option says: node_exporter's textfile directory
    when it exists (the package is installed), else nowhere."""
    return NODE_EXPORTER_DIR / DEFAULT_NAME if NODE_EXPORTER_DIR.is_dir() else None


class Textfile:
    """One metrics file: :meth:`write` replaces it, :meth:`remove` takes it away."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temp = f".{path.name}.tmp"
        self._warned = False

    def write(self, text: str) -> bool:
        """Replace the file with ``text``; False (warned once) if it cannot be."""
        try:
            self._replace(text.encode())
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("metrics: cannot write %s: %s; phyllod runs on without it "
                            "(warned once until a write succeeds)", self.path,
                            e.strerror or e)
            return False
        if self._warned:
            self._warned = False
            log.info("metrics: %s written again", self.path)
        return True

    def remove(self) -> None:
        """At stop: no file is better than one that says a stopped phyllod is fine."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _replace(self, data: bytes) -> None:
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):  # a crash's leftover
                os.unlink(self._temp, dir_fd=directory)
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, MODE, dir_fd=directory)
            try:
                os.fchmod(fd, MODE)  # the umask took some bits of MODE
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.rename(self._temp, self.path.name, src_dir_fd=directory,
                          dst_dir_fd=directory)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(self._temp, dir_fd=directory)
                raise
        finally:
            os.close(directory)
