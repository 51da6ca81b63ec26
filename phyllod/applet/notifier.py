"""Desktop notifications through libnotify (org.freedesktop.Notifications on the session bus).

A thin layer over Notify.Notification: show a :class:`~.notices.Notice`, keep
a reference while it is open (libnotify forgets action callbacks of a
notification object that is garbage-collected), replace or close it by a tag.
A missing notification server is logged, never fatal: the tray still works.
The server's capabilities are asked before each notice (a server may be
replaced by one that renders markup), so bodies are escaped where needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gi

gi.require_version("Notify", "0.7")
from gi.repository import GLib, Notify  # noqa: E402

from phyllod.applet.notices import Notice, as_sent  # noqa: E402

log = logging.getLogger(__name__)

APP_NAME = "phyllod"
ICON = "phyllod"
DESKTOP_ENTRY = "phyllod-applet"


class Notifier:
    """Open notifications by tag (a request's object path), so they can be updated and closed."""

    def __init__(self) -> None:
        Notify.init(APP_NAME)
        self._open: dict[str, Notify.Notification] = {}
        self._anonymous: set[Notify.Notification] = set()

    def show(self, notice: Notice, tag: str | None = None,
             on_action: Callable[[str], None] | None = None) -> None:
        """Show ``notice``; ``on_action(key)`` runs when the person picks one of its actions."""
        summary, body = as_sent(notice, Notify.get_server_caps() or ())
        n = self._open.get(tag) if tag else None
        if n is None:
            n = Notify.Notification.new(summary, body, ICON)
            n.connect("closed", self._closed, tag)
            n.set_hint("desktop-entry", GLib.Variant("s", DESKTOP_ENTRY))
        else:
            n.update(summary, body, ICON)
            n.clear_actions()
        n.set_timeout(notice.timeout_ms)
        n.set_urgency(Notify.Urgency.CRITICAL if notice.critical else Notify.Urgency.NORMAL)
        for key, label in notice.actions:
            n.add_action(key, label, self._action, on_action)
        if tag:
            self._open[tag] = n
        else:
            self._anonymous.add(n)
        try:
            n.show()
            log.info("notification %s: %s | %s", notice.kind, notice.summary, notice.body)
        except GLib.Error as e:
            log.warning("cannot show the notification %r: %s", notice.summary, e.message)
            self._forget(n, tag)

    def close(self, tag: str) -> None:
        """Close the notification shown under ``tag`` (its request is gone), if still open."""
        n = self._open.pop(tag, None)
        if n is None:
            return
        try:
            n.close()
        except GLib.Error as e:
            log.info("closing the notification for %s: %s", tag, e.message)

    def _action(self, n: Notify.Notification, key: str,
                on_action: Callable[[str], None] | None) -> None:
        log.info("notification action %s", key)
        if on_action is not None:
            on_action(key)

    def _closed(self, n: Notify.Notification, tag: str | None) -> None:
        self._forget(n, tag)

    def _forget(self, n: Notify.Notification, tag: str | None) -> None:
        if tag and self._open.get(tag) is n:
            del self._open[tag]
        self._anonymous.discard(n)

    def shutdown(self) -> None:
        for tag in list(self._open):
            self.close(tag)
        Notify.uninit()
