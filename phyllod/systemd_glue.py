"""systemd adapter: readiness and status notifications, journal logging.

Both degrade quietly where systemd is absent (a shell, a container, a test):
notify is a no-op without ``NOTIFY_SOCKET``, and logs go to stderr when
journald is not listening (JournalHandler would drop them silently).
"""

from __future__ import annotations

import logging
import os
import sys

from systemd import daemon, journal

JOURNAL_SOCKET = "/run/systemd/journal/socket"
log = logging.getLogger(__name__)

#: Structured fields phyllod attaches to log records (``extra=``), in the
#: order the stderr formatter shows them.
FIELDS = ("PHYLLOD_DEVICE", "PHYLLOD_GUEST", "PHYLLOD_RULE", "PHYLLOD_STATE")


def notify(message: str) -> None:
    """Send ``READY=1``, ``STATUS=…`` etc. to the service manager, if any."""
    try:
        daemon.notify(message)
    except OSError as e:  # NOTIFY_SOCKET names a path that is gone
        log.debug("sd_notify(%s) failed: %s", message, e)


class _FieldsFormatter(logging.Formatter):
    """stderr lines that keep the journal fields visible: ``msg [device=… guest=…]``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{f.removeprefix('PHYLLOD_').lower()}={getattr(record, f)}"
                  for f in FIELDS if getattr(record, f, "")]
        return f"{text} [{' '.join(fields)}]" if fields else text


def setup_logging(level: str = "INFO", force_stderr: bool = False) -> None:
    """Log to the journal when it is there, else to stderr."""
    handler: logging.Handler
    if not force_stderr and os.path.exists(JOURNAL_SOCKET):
        handler = journal.JournalHandler(SYSLOG_IDENTIFIER="phyllod")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
