"""Authorization of mutating D-Bus calls through polkit, by the caller's bus name.

polkit looks the caller up itself (uid, session, whether it is active and
local) from the ``system-bus-name`` subject, so phyllod never trusts anything
the caller says about itself. Where polkit is not on the bus (a minimal host,
a container), only root may change anything: fail closed, never open.

Every check waits on phyllod's one bus connection, whose pending calls the
bus limits (128 on Debian's system bus), and an interactive check waits for a
person who may never answer. So checks are bounded (:class:`Limits`): so many
in flight per caller, per user and overall, the excess refused with ``Busy``
before polkit is asked; each times out; each is cancelled
(``CancelCheckAuthorization``) on timeout and when its caller leaves the bus.
Root's checks count against no limit, so others' checks, however many wait,
never keep root from steering phyllod.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from phyllod.contract import (
    DBUS_ERROR_PREFIX,
    DBUS_NAME,
    DBUS_PATH,
    NAME_HAS_NO_OWNER,
    NAME_OWNER_CHANGED,
    SERVICE_UNKNOWN,
)
from phyllod.core.errors import Busy, NotAuthorized

log = logging.getLogger("phyllod")

_POLKIT = "org.freedesktop.PolicyKit1"
_AUTHORITY_PATH = "/org/freedesktop/PolicyKit1/Authority"
_AUTHORITY = "org.freedesktop.PolicyKit1.Authority"
_DBUS = {"destination": DBUS_NAME, "path": DBUS_PATH, "interface": DBUS_NAME}
_ALLOW_USER_INTERACTION = 0x1
#: Errors meaning "no polkit here" rather than "polkit said no".
_ABSENT = {SERVICE_UNKNOWN, NAME_HAS_NO_OWNER, DBUS_ERROR_PREFIX + "Spawn.ServiceNotFound"}
#: The caller is gone: no one to authorize.
_GONE = {NAME_HAS_NO_OWNER}


@dataclass(frozen=True, slots=True)
class Limits:
    """How many checks may wait, and how long.

    ``total`` stays well below the bus's 128 pending calls per connection, so
    phyllod's own calls (logind, the bus) always have room; ``per_user`` keeps
    one user, whatever number of connections it opens, to half of it.
    """

    per_caller: int = 4
    per_user: int = 16
    total: int = 32
    #: A check no person answers: polkit decides at once, unless it is stuck.
    timeout: float = 25.0
    #: A check a person answers in an authentication dialog.
    interactive_timeout: float = 120.0


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class Stats:
    """Counts since start, for SIGUSR1's log line and the tests."""

    asked: int = 0
    root: int = 0  # of those asked: root's, which no limit refuses
    busy: int = 0
    timed_out: int = 0
    caller_left: int = 0


class Authority:
    """Asks polkit (or, without it, the bus for the caller's uid) before every change.

    Made by the daemon's root and handed to the bus service, which
    attaches it to its connection (:meth:`attach`): checks go out on the connection
    whose callers they are about.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.bus: MessageBus | None = None
        self.limits = limits
        self.stats = Stats()
        self._callers: Counter[str] = Counter()  # checks waiting for polkit, by caller
        self._users: Counter[int] = Counter()  # the same, by uid (root's not counted)
        #: Per caller with checks waiting: done once it leaves the bus.
        self._gone: dict[str, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)

    def attach(self, bus: MessageBus) -> None:
        """Check over ``bus`` from now on, and hear there when callers leave."""
        self.bus = bus
        bus.add_message_handler(self._on_message)

    @property
    def in_flight(self) -> int:
        """Checks waiting for polkit now, root's included."""
        return sum(self._callers.values())

    def stats_line(self) -> str:
        """Its counts, for SIGUSR1's log line: what polkit checks wait."""
        st = self.stats
        return (f"polkit: {self.in_flight} checks waiting, {st.asked} asked, {st.root} root, "
                f"{st.busy} busy, {st.timed_out} timed out, {st.caller_left} callers left")

    async def check(self, sender: str, polkit_id: str, interactive: bool,
                    details: Mapping[str, str]) -> None:
        """Return if ``sender`` may do ``polkit_id`` (a polkit action id, contract.POLKIT_*);
        raise NotAuthorized or Busy otherwise.

        ``details`` reach polkit's prompt (``$(device)`` in the action's
        message) and rules (``action.lookup("device")``).
        """
        uid = await self._uid(sender, polkit_id)
        if uid != 0:
            self._admit(sender, uid)
        if not self._callers[sender]:
            self._gone[sender] = asyncio.get_running_loop().create_future()
            self._match(sender, "AddMatch")
        self._callers[sender] += 1
        if uid != 0:
            self._users[uid] += 1
        else:
            self.stats.root += 1
        try:
            await self._ask(sender, uid, polkit_id, interactive, details)
        finally:
            self._callers[sender] -= 1
            if not self._callers[sender]:
                del self._callers[sender]
                self._gone.pop(sender).cancel()
                self._match(sender, "RemoveMatch")
            if uid != 0:
                self._users[uid] -= 1
                if not self._users[uid]:
                    del self._users[uid]

    def _admit(self, sender: str, uid: int) -> None:
        """Refuse a check past a limit with Busy, before polkit is asked."""
        if self._callers[sender] >= self.limits.per_caller:
            why = f"{self._callers[sender]} authorization checks of this caller are"
        elif self._users[uid] >= self.limits.per_user:
            why = f"{self._users[uid]} authorization checks of this user are"
        elif sum(self._users.values()) >= self.limits.total:
            why = "too many authorization checks are"
        else:
            return
        self.stats.busy += 1
        raise Busy(f"{why} still waiting for polkit; try again once they are answered")

    def _match(self, sender: str, member: str) -> None:
        """Hear (or stop hearing) that ``sender`` left the bus.

        No reply is awaited: the bus handles phyllod's messages in order, so the
        rule is in force before polkit is asked; polkit refuses the check of a
        caller that left before that.
        """
        rule = (f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
                f"member='{NAME_OWNER_CHANGED}',arg0='{sender}'")
        if self.bus is not None and self.bus.connected:
            self.bus.send(Message(**_DBUS, member=member, signature="s", body=[rule],
                                  flags=MessageFlag.NO_REPLY_EXPECTED))

    def _on_message(self, msg: Message) -> None:
        if (msg.message_type is MessageType.SIGNAL and msg.member == NAME_OWNER_CHANGED
                and msg.sender == DBUS_NAME and msg.signature == "sss"
                and not msg.body[2]):
            left = self._gone.get(msg.body[0])
            if left is not None and not left.done():
                left.set_result(None)

    async def _uid(self, sender: str, polkit_id: str) -> int:
        reply = await self._call(Message(**_DBUS, member="GetConnectionUnixUser",
                                         signature="s", body=[sender]), sender,
                                 self.limits.timeout, polkit_id)
        if reply.message_type is MessageType.ERROR:
            if reply.error_name in _GONE:
                self.stats.caller_left += 1
                raise NotAuthorized(f"not authorized for {polkit_id}: the caller left the bus")
            raise NotAuthorized(f"not authorized for {polkit_id}: the bus could not tell who "
                                f"is calling ({reply.error_name})")
        return int(reply.body[0])

    async def _ask(self, sender: str, uid: int, polkit_id: str, interactive: bool,
                   details: Mapping[str, str]) -> None:
        cancellation_id = f"phyllod-{next(self._ids)}"
        self.stats.asked += 1
        timeout = self.limits.interactive_timeout if interactive else self.limits.timeout
        reply = await self._call(Message(
            destination=_POLKIT, path=_AUTHORITY_PATH, interface=_AUTHORITY,
            member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
            body=[["system-bus-name", {"name": Variant("s", sender)}], polkit_id, dict(details),
                  _ALLOW_USER_INTERACTION if interactive else 0, cancellation_id],
        ), sender, timeout, polkit_id, cancellation_id)
        if reply.message_type is MessageType.ERROR:
            if reply.error_name in _ABSENT:
                if uid == 0:
                    log.debug("polkit is not running; %s allowed for root", polkit_id)
                    return
                raise NotAuthorized(f"not authorized for {polkit_id}: polkit is not running, "
                                    "so only root may change anything")
            text = str(reply.body[0]) if reply.body else ""
            hint = (" (install me.phyllo.phyllod.policy in /usr/share/polkit-1/actions)"
                    if "not registered" in text else "")
            raise NotAuthorized(f"polkit could not check {polkit_id}: {reply.error_name}: "
                                f"{text[:500]}{hint}")
        authorized, challenge, _details = reply.body[0]
        if not authorized:
            hint = " (authentication is required and no agent answered)" if challenge else ""
            raise NotAuthorized(f"not authorized to {polkit_id.rsplit('.', 1)[-1]}: "
                                f"polkit denied {polkit_id}{hint}")

    async def _call(self, msg: Message, sender: str, timeout: float, polkit_id: str,
                    cancellation_id: str = "") -> Message:
        """``msg``'s reply, unless it takes longer than ``timeout`` or ``sender`` leaves."""
        assert self.bus is not None, "attach() first"
        call = asyncio.ensure_future(self.bus.call(msg))
        left = self._gone.get(sender)
        done, _ = await asyncio.wait({call} if left is None else {call, left}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if call in done:
            reply = call.result()
            assert reply is not None
            return reply
        call.cancel()
        # dbus-fast keeps a handler for the reply until it comes; polkit answers
        # a cancelled check, a stuck one may never answer.
        getattr(self.bus, "_method_return_handlers", {}).pop(msg.serial, None)
        if cancellation_id:
            self.bus.send(Message(destination=_POLKIT, path=_AUTHORITY_PATH,
                                  interface=_AUTHORITY, member="CancelCheckAuthorization",
                                  signature="s", body=[cancellation_id],
                                  flags=MessageFlag.NO_REPLY_EXPECTED))
        if left is not None and left in done:
            self.stats.caller_left += 1
            log.info("%s: the caller %s left the bus; its authorization check was cancelled",
                     polkit_id, sender)
            raise NotAuthorized(f"not authorized for {polkit_id}: the caller left the bus")
        self.stats.timed_out += 1
        log.warning("%s: no answer within %.0f s for %s; the check was cancelled", polkit_id,
                    timeout, sender)
        raise NotAuthorized(f"not authorized for {polkit_id}: no answer from "
                            f"{'polkit' if cancellation_id else 'the bus'} within "
                            f"{timeout:.0f} s; nothing was done")
