"""Authorization of mutating D-Bus calls through polkit, by the caller's bus name.

polkit looks the caller up itself (uid, session, whether it is active and
local) from the ``system-bus-name`` subject, so phyllod never trusts anything
the caller says about itself. Where polkit is not on the bus (a minimal host,
a container), only root may change anything: fail closed, never open.
"""

from __future__ import annotations

import logging

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from phyllod.errors import NotAuthorized

log = logging.getLogger("phyllod")

#: Actions declared in dbus/me.phyllo.phyllod.policy.
ATTACH = "me.phyllo.phyllod.attach"
RELOAD = "me.phyllo.phyllod.reload"
ANSWER = "me.phyllo.phyllod.answer"

_ALLOW_USER_INTERACTION = 0x1
#: Errors meaning "no polkit here" rather than "polkit said no".
_ABSENT = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
}


class Authority:
    """Asks polkit (or, without it, the bus for the caller's uid) before every change."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def check(self, sender: str, action: str, interactive: bool) -> None:
        """Return if ``sender`` may perform ``action``; raise NotAuthorized otherwise."""
        reply = await self.bus.call(Message(
            destination="org.freedesktop.PolicyKit1",
            path="/org/freedesktop/PolicyKit1/Authority",
            interface="org.freedesktop.PolicyKit1.Authority",
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[["system-bus-name", {"name": Variant("s", sender)}], action, {},
                  _ALLOW_USER_INTERACTION if interactive else 0, ""],
        ))
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            if reply.error_name in _ABSENT:
                await self._root_only(sender, action)
                return
            text = reply.body[0] if reply.body else ""
            hint = (" (install me.phyllo.phyllod.policy in /usr/share/polkit-1/actions)"
                    if "not registered" in str(text) else "")
            raise NotAuthorized(f"polkit could not check {action}: {reply.error_name}: "
                                f"{text}{hint}")
        authorized, challenge, _details = reply.body[0]
        if not authorized:
            hint = " (authentication is required and no agent answered)" if challenge else ""
            raise NotAuthorized(f"not authorized to {action.rsplit('.', 1)[-1]}: "
                                f"polkit denied {action}{hint}")

    async def _root_only(self, sender: str, action: str) -> None:
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
            signature="s", body=[sender]))
        assert reply is not None
        if reply.message_type is MessageType.ERROR or reply.body[0] != 0:
            raise NotAuthorized(f"not authorized for {action}: polkit is not running, "
                                "so only root may change anything")
        log.debug("polkit is not running; %s allowed for root", action)
