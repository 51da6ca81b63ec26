"""phyllodctl's D-Bus half: kept thin, it only sends calls and hands back plain values.

Everything dbus-fast specific (messages, variants, flags, exceptions) stays in
this module, so the rest of phyllodctl is pure and testable without a bus, and
this part can be integration-tested against the real daemon on a private bus
(``--bus unix:path=…``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError

from phyllod.bus.connect import describe, open_bus
from phyllod.contract import (
    BUS_NAME,
    DBUS_NAME,
    DBUS_PATH,
    MANAGER_IFACE,
    OBJECT_MANAGER,
    PROPERTIES,
    ROOT,
)
from phyllod.ctl.errors import CtlError, ExitCode, error_from_dbus
from phyllod.ctl.output import ManagedObjects

# libdbus's default: a read that takes longer means the daemon is stuck.
READ_TIMEOUT = 25.0
# Attach/Detach/ClearOverride answer once the device settled (a libvirt attach takes
# seconds, a polkit agent may wait for a password): be generous rather than give up
# while the daemon is still working.
MUTATION_TIMEOUT = 300.0

SignalHandler = Callable[[str, str, str, list[Any]], None]


def unwrap(value: Any) -> Any:
    """Plain Python values from dbus-fast's, so JSON and formatting need not know D-Bus."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


async def connect(bus: str) -> MessageBus:
    """Connect to ``system``, ``session`` or a D-Bus address (``unix:path=/tmp/x/bus``).

    A malformed ``--bus`` is a usage error, but an unset session address only
    means there is no session bus.
    """
    try:
        return await open_bus(bus)
    except InvalidAddressError as e:
        if bus == "session":
            raise CtlError(ExitCode.UNREACHABLE, f"no session bus: {e}") from None
        raise CtlError(ExitCode.USAGE, f"invalid address for {describe(bus)}: {e}") from None
    except (OSError, EOFError, AuthError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise CtlError(ExitCode.UNREACHABLE,
                       f"cannot connect to {describe(bus)}: {reason}") from None


class Client:
    """The calls phyllodctl makes, each turning a failure into a :class:`CtlError`."""

    def __init__(self, bus: MessageBus, interactive: bool = True) -> None:
        self.bus = bus
        self.interactive = interactive

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: Sequence[Any] = (), *, mutation: bool = False,
                   destination: str = BUS_NAME) -> list[Any]:
        """One method call; the reply's body, unwrapped.

        Mutations carry ALLOW_INTERACTIVE_AUTHORIZATION (unless --no-ask-password)
        so polkit may ask for a password through the session's agent.
        """
        flags = MessageFlag.NONE
        if mutation and self.interactive:
            flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
        message = Message(destination=destination, path=path, interface=interface,
                          member=member, signature=signature, body=list(body), flags=flags)
        timeout = MUTATION_TIMEOUT if mutation else READ_TIMEOUT
        try:
            reply = await asyncio.wait_for(self.bus.call(message), timeout)
        except TimeoutError:
            raise CtlError(ExitCode.FAILED,
                           f"{member}: no answer from phyllod within {timeout:.0f} s") from None
        except (OSError, EOFError) as e:
            raise CtlError(ExitCode.UNREACHABLE, f"lost the connection to the bus: {e}") from None
        if reply is None:  # the connection closed under the call
            raise CtlError(ExitCode.UNREACHABLE, "lost the connection to the bus")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise error_from_dbus(reply.error_name or "", text)
        return unwrap(reply.body)

    async def managed_objects(self) -> ManagedObjects:
        """Every device and guest with all properties, in one round trip."""
        (objects,) = await self.call(ROOT, OBJECT_MANAGER, "GetManagedObjects")
        return objects

    async def properties(self, path: str, interface: str) -> dict[str, Any]:
        """All properties of one object (the Manager is the root, not a managed object)."""
        (props,) = await self.call(path, PROPERTIES, "GetAll", "s", [interface])
        return props

    async def manager(self, member: str, *args: str, mutation: bool = False) -> list[Any]:
        """A Manager method; every argument is a string in this contract."""
        return await self.call(ROOT, MANAGER_IFACE, member, "s" * len(args), args,
                               mutation=mutation)

    async def watch(self, rules: Sequence[str], handler: SignalHandler) -> None:
        """Route the signals matching ``rules`` to ``handler(path, interface, member, body)``.

        The handler is added before the match rules so no signal is missed.
        """
        def on_message(message: Message) -> None:
            if message.message_type == MessageType.SIGNAL:
                handler(message.path or "", message.interface or "", message.member or "",
                        unwrap(message.body))

        self.bus.add_message_handler(on_message)
        for rule in rules:
            await self.call(DBUS_PATH, DBUS_NAME, "AddMatch", "s", [rule],
                            destination=DBUS_NAME)

    async def wait_closed(self) -> None:
        """Return when the connection is gone, for whatever reason.

        The reason does not matter to phyllodctl (a call in flight reports it), and
        swallowing it spares asyncio's "exception never retrieved" noise.
        """
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()

    async def close(self) -> None:
        """Disconnect and wait, so no socket is left for the event loop's teardown."""
        self.bus.disconnect()
        await self.wait_closed()
