"""Which desktop notification, if any, a change deserves, and its text.

A person wants to hear when a device lands in a guest, comes back, fails or is
refused for safety, and must be asked when phyllod waits for an answer; not
about every intermediate state, not about devices already present when the
applet starts, and not twice about the same failure while phyllod retries
with backoff. :class:`NoticeTracker` remembers, per device id, what was last
seen and told; :func:`request_notice` and :func:`error_notice` build the rest.

Much of a notice is device-controlled text (a device's name, a keyboard's
name, a filesystem label in a reason), and notification servers that
announce ``body-markup`` render the body as markup (``<b> <i> <u> <a> <img>``
and entities): :func:`as_sent` escapes the body for those, so a device named
``<a href="file:///">`` is shown as it says, never as a link. The summary and
the action labels are plain text by the Desktop Notifications spec and sent
as they are: dunst escapes the summary itself (since 1.4), and text escaped
here would show its entities (``&amp;``) on every server that keeps to the spec.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from phyllod.applet.commands import answer_key
from phyllod.applet.views import DeviceView, RequestView

SAFETY_PREFIX = "not safe to pass"
#: The capability by which a server says it renders markup in bodies.
BODY_MARKUP = "body-markup"
_MARKUP_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                 "'": "&#39;"})


@dataclass(frozen=True)
class Notice:
    """A notification: ``kind`` says why (tests and the icon use it), actions are (key, label)."""

    kind: str  # attached, detached, failed, denied, denied-safety, ask, error
    summary: str
    body: str
    actions: tuple[tuple[str, str], ...] = ()
    timeout_ms: int = -1  # -1: the server's default
    critical: bool = False


def markup_escaped(text: str) -> str:
    """``text`` as body markup that shows it literally (what GLib.markup_escape_text does)."""
    return text.translate(_MARKUP_ESCAPES)


def as_sent(notice: Notice, capabilities: Collection[str]) -> tuple[str, str]:
    """(summary, body) as they go to a server with ``capabilities``: the body escaped
    where the server renders markup, the summary plain (see the module's note)."""
    body = markup_escaped(notice.body) if BODY_MARKUP in capabilities else notice.body
    return notice.summary, body


@dataclass
class _Seen:
    state: str
    guest: str
    told: tuple[str, str, str] | None = None  # (state, guest, reason) last notified


class NoticeTracker:
    """Turns successive device states into notifications, quietly for what was already there."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def observe(self, device: DeviceView, quiet: bool = False) -> Notice | None:
        """Record ``device``'s current state; the notice its change deserves, if any.

        ``quiet`` records without telling: for the devices present when the
        applet connects. A device id seen before (phyllod restarted, the
        device stayed) is compared with what it was, so a restart says nothing.
        """
        key = device.id or device.path
        before = self._seen.get(key)
        now = (device.state, device.guest, device.reason)
        if before is None:
            before = _Seen("host", "", told=now if quiet else None)
            self._seen[key] = before
            if quiet:
                before.state, before.guest = device.state, device.guest
                return None
        notice = None if quiet else _transition(before, device)
        if notice is not None:
            before.told = now
        if device.state in ("host", "attached") and notice is None:
            before.told = now  # a settled state ends a failure streak
        before.state, before.guest = device.state, device.guest
        return notice

    def forget(self, device_id: str) -> None:
        """The device was unplugged: a later replug starts afresh."""
        self._seen.pop(device_id, None)


def _transition(before: _Seen, device: DeviceView) -> Notice | None:
    state, title = device.state, device.title
    if state == "attached" and (before.state != "attached" or before.guest != device.guest):
        return Notice("attached", f"{title} is in {device.guest}",
                      _with_id(device, device.reason))
    if state == "host" and before.state in ("attached", "detaching"):
        where = f" from {before.guest}" if before.guest else ""
        return Notice("detached", f"{title} is back on the host",
                      _with_id(device, f"It left{where}. {device.reason}".strip()))
    told = (state, device.guest, device.reason)
    if state == "failed" and before.told != told and not _same_failure(before.told, told):
        if before.state == "detaching" or device.reason.startswith("detach"):
            guest = f" from {device.guest}" if device.guest else ""
            summary = f"{title} could not be taken back{guest}"
        else:
            guest = f" to {device.guest}" if device.guest else ""
            summary = f"{title} could not be passed{guest}"
        return Notice("failed", summary,
                      _with_id(device, device.reason or "phyllod gave no reason"),
                      critical=True)
    if state == "denied" and before.told != told:
        if device.reason.startswith(SAFETY_PREFIX):
            return Notice("denied-safety", f"{title} stays on the host: not safe to pass",
                          _with_id(device, device.reason), critical=True)
        return Notice("denied", f"{title} stays on the host: denied",
                      _with_id(device, device.reason or f"rule {device.rule!r}"))
    return None


def _same_failure(told: tuple[str, str, str] | None, now: tuple[str, str, str]) -> bool:
    """A retry failing again for the same guest is the same failure, whatever the wording."""
    return told is not None and told[0] == "failed" and told[1] == now[1]


def _with_id(device: DeviceView, text: str) -> str:
    text = text.strip()
    return f"{device.id}: {text}" if text else device.id


def format_deadline(deadline_us: int) -> str:
    """The deadline as local wall-clock time, as a person reads a clock (``14:52:10``)."""
    return time.strftime("%H:%M:%S", time.localtime(deadline_us / 1e6))


def request_notice(request: RequestView, now_us: int | None = None) -> Notice:
    """The question for an open request: one button per answer, lasting until its deadline."""
    if now_us is None:
        now_us = time.time_ns() // 1000
    actions: list[tuple[str, str]] = [(answer_key(g, False), f"Send to {g}")
                                      for g in request.candidates]
    actions.append((answer_key("", False), "Keep on the host"))
    actions += [(answer_key(g, True), f"Always send to {g}") for g in request.candidates]
    actions.append((answer_key("", True), "Always keep on the host"))
    left_ms = (request.deadline_us - now_us) // 1000 if request.deadline_us else -1
    deadline = format_deadline(request.deadline_us) if request.deadline_us else ""
    if request.candidates:
        offer = "It can go to " + ", ".join(request.candidates) + "."
    else:
        offer = "No guest is running to take it."
    until = f" Without an answer by {deadline} it stays on the host." if deadline else ""
    rule = f" (rule {request.rule!r})" if request.rule else ""
    return Notice("ask", f"Where should {request.description} go?",
                  f"{request.device_id} was plugged in{rule}. {offer}{until}",
                  tuple(actions), timeout_ms=max(left_ms, 1) if left_ms != -1 else -1,
                  critical=False)


def error_notice(what: str, error_name: str, message: str) -> Notice:
    """A refused call (``me.phyllo.Phyllod1.Error.*`` or a bus error), as a person reads it."""
    short = error_name.rsplit(".", 1)[-1] if error_name else "Error"
    labels = {"NotAuthorized": "not authorized", "NoSuchDevice": "no such device",
              "NoSuchGuest": "no such guest", "NoSuchRequest": "the question is gone",
              "Denied": "denied", "Busy": "busy", "Failed": "failed",
              "ServiceUnknown": "phyllod is not running", "NoReply": "no answer from phyllod"}
    return Notice("error", f"Could not {what}: {labels.get(short, short)}",
                  message or error_name, critical=True)
