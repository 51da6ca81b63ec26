"""systemd adapter: readiness and status notifications, journal logging.

Both degrade quietly where systemd is absent (a shell, a container, a test):
notify is a no-op without ``NOTIFY_SOCKET``, and logs go to stderr when
journald is not listening (JournalHandler would drop them silently).
"""

from __future__ import annotations

import logging
import os
import sys
from enum import StrEnum, unique

from systemd import daemon, journal

JOURNAL_SOCKET = "/run/systemd/journal/socket"
log = logging.getLogger(__name__)

#: Structured fields phyllod attaches to log records (``extra=``), in the
#: order the stderr formatter shows them.
FIELDS = ("PHYLLOD_DEVICE", "PHYLLOD_GUEST", "PHYLLOD_RULE", "PHYLLOD_STATE")


@unique
class MessageId(StrEnum):
    """``MESSAGE_ID=`` of phyllod's main events, for ``journalctl MESSAGE_ID=…``.

    Fixed 128-bit ids (as systemd's own catalog uses): a tool can follow
    "every attach that failed" across versions, whatever the wording.
    """

    STARTED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c40"
    POLICY_LOADED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c41"
    POLICY_REFUSED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c42"
    DEVICE_ADDED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c43"
    DEVICE_REMOVED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c44"
    DECISION = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c45"
    ATTACHED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c46"
    ATTACH_FAILED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c47"
    DETACHED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c48"
    DETACH_FAILED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c49"
    OVERRIDE = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c4a"
    GUEST_STATE = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c4b"
    LIBVIRT_CONNECTED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c4c"
    LIBVIRT_LOST = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c4d"
    ASKED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c4e"
    ANSWERED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c4f"
    NOT_ANSWERED = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c50"
    SLEEP = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c51"
    RESUME = "5b0e3c6d8f2a4e1b9c7d0a6f3e2b1c52"


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), None if off.

    systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, which must be us)
    when the unit has ``WatchdogSec=``.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


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
