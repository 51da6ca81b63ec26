"""A polkit stand-in that never answers one user's checks (run as a script).

It owns org.freedesktop.PolicyKit1 on the bus given by DBUS_SYSTEM_BUS_ADDRESS
and answers CheckAuthorization like polkitd for everyone but the uids given
on the command line: their checks are held and never answered, as when a
caller asks for interactive authorization and never answers its own agent.
CancelCheckAuthorization ends a held check the way polkitd does (the error
``org.freedesktop.PolicyKit1.Error.Cancelled`` to the check's caller); the
test's own ``Release(s id, b authorized)`` answers one, as a person at the
agent would, late.

It prints one JSON line per event (flushed, for a log file the test reads):
``{"event": "check", "id": …, "uid": …, "action": …, "details": {…}, "held": …}``
and ``{"event": "cancel", "id": …, "held": …}``. Only dbus-fast is imported.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

NAME = "org.freedesktop.PolicyKit1"
PATH = "/org/freedesktop/PolicyKit1/Authority"
IFACE = "org.freedesktop.PolicyKit1.Authority"
CANCELLED = "org.freedesktop.PolicyKit1.Error.Cancelled"


def _say(**event: object) -> None:
    print(json.dumps(event, sort_keys=True), flush=True)


async def main(stalled: set[int]) -> None:
    bus = await MessageBus(bus_address=os.environ["DBUS_SYSTEM_BUS_ADDRESS"]).connect()
    held: dict[str, Message] = {}
    tasks: set[asyncio.Task] = set()

    async def uid_of(name: str) -> int:
        reply = await bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixUser", signature="s",
            body=[name]))
        assert reply is not None
        return -1 if reply.message_type is MessageType.ERROR else int(reply.body[0])

    async def check(msg: Message) -> None:
        subject, action, details, _flags, cancellation_id = msg.body
        uid = await uid_of(subject[1]["name"].value)
        stall = uid in stalled
        if stall:
            held[cancellation_id] = msg
        _say(event="check", id=cancellation_id, uid=uid, action=action, details=details,
             held=len(held))
        if not stall:
            bus.send(Message.new_method_return(msg, "(bba{ss})", [[True, False, {}]]))

    def handler(msg: Message) -> bool:
        if msg.message_type is not MessageType.METHOD_CALL or msg.interface != IFACE:
            return False
        if msg.member == "CheckAuthorization" and msg.signature == "(sa{sv})sa{ss}us":
            task = asyncio.ensure_future(check(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return True
        if msg.member == "Release" and msg.signature == "sb":  # the test's own: answer one
            original = held.pop(msg.body[0], None)
            if original is not None:
                bus.send(Message.new_method_return(original, "(bba{ss})",
                                                   [[msg.body[1], False, {}]]))
            _say(event="release", id=msg.body[0], authorized=msg.body[1], held=len(held))
            bus.send(Message.new_method_return(msg))
            return True
        if msg.member == "CancelCheckAuthorization" and msg.signature == "s":
            original = held.pop(msg.body[0], None)
            if original is not None:
                bus.send(Message.new_error(original, CANCELLED, "the check was cancelled"))
            _say(event="cancel", id=msg.body[0], held=len(held))
            if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
                bus.send(Message.new_method_return(msg))
            return True
        return False

    bus.add_message_handler(handler)
    await bus.request_name(NAME)
    await bus.wait_for_disconnect()


if __name__ == "__main__":
    asyncio.run(main({int(uid) for uid in sys.argv[1:]}))
