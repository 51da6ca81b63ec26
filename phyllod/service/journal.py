"""The journal fields of the daemon's log records (``journalctl PHYLLOD_GUEST=work``).

Not a part: it holds no state and decides nothing. It is the one helper every
service part uses, as host/safe_read is for the host adapters.
"""

from __future__ import annotations

import logging

from phyllod.host.systemd_glue import MessageId

log = logging.getLogger("phyllod")


def fields(device: str = "", guest: str = "", rule: str = "", state: str = "",
           event: MessageId | None = None) -> dict:
    """The ``extra`` of a log record: which device, guest, rule and state it is about."""
    extra = {"PHYLLOD_DEVICE": device, "PHYLLOD_GUEST": guest, "PHYLLOD_RULE": rule,
             "PHYLLOD_STATE": state}
    if event is not None:
        extra["MESSAGE_ID"] = str(event)
    return {"extra": extra}
