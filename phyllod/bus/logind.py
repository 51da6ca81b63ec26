"""logind's sleep hooks: a "delay" inhibitor and the PrepareForSleep signal.

A USB device passed through to a guest does not survive the host's suspend
well: the guest sees it vanish mid-transfer, and on resume QEMU may hold a
stale handle. So phyllod holds a logind *delay* inhibitor, which makes logind
announce a sleep with ``PrepareForSleep(true)`` and then wait (at most
``InhibitDelayMaxUSec``) until the inhibitor's file descriptor is closed. The
daemon detaches what it must, calls :meth:`SleepWatcher.release` so the sleep
proceeds, and after ``PrepareForSleep(false)`` calls
:meth:`SleepWatcher.reacquire` to be asked again next time.

The inhibitor *is* the file descriptor logind hands back: it stays in force
until every copy is closed, whatever happens to the D-Bus connection. Hence
the care taken here that exactly one copy is held and every other one
received is closed.

Without logind (a container, a host without systemd) phyllod runs on: sleep
handling is a nicety, not a reason to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from phyllod.bus.connect import open_bus
from phyllod.contract import DBUS_NAME, DBUS_PATH, NAME_OWNER_CHANGED, PROPERTIES

log = logging.getLogger("phyllod")

LOGIND = "org.freedesktop.login1"
PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"

#: Arguments of Inhibit(what, who, why, mode).
WHAT = "sleep"
WHO = "phyllod"
WHY = "Detach passed-through USB devices before sleep"
MODE = "delay"

#: logind's own default for InhibitDelayMaxUSec, used until the property is read.
DEFAULT_MAX_DELAY = 5.0

# The sender is matched by the bus, so only logind's PrepareForSleep is routed here.
_PREPARE_RULE = (f"type='signal',sender='{LOGIND}',path='{PATH}',"
                 f"interface='{MANAGER}',member='PrepareForSleep'")
_OWNER_RULE = (f"type='signal',sender='{DBUS_NAME}',path='{DBUS_PATH}',"
               f"interface='{DBUS_NAME}',member='{NAME_OWNER_CHANGED}',arg0='{LOGIND}'")


class LogindError(Exception):
    """A call to logind or the bus failed; the message says which and why."""


def _close_fds(reply: Message | None) -> None:
    """Close every descriptor a reply carried: dbus-fast leaves them all to the caller."""
    for fd in (reply.unix_fds if reply is not None else None) or ():
        with contextlib.suppress(OSError):
            os.close(fd)


def _close_fds_when_done(call: asyncio.Future[Message]) -> None:
    """For a call given up on (cancelled caller): close what its reply brings, if it comes."""
    if not call.cancelled() and call.exception() is None:
        _close_fds(call.result())


class SleepWatcher:
    """Holds a logind "delay" sleep inhibitor and reports PrepareForSleep.

    ``on_prepare(True)`` is called before a sleep, ``on_prepare(False)`` after
    the resume, on the event loop. The owner decides when the sleep may go on
    (:meth:`release`) and when to be asked again (:meth:`reacquire`); logind
    waits at most :attr:`max_delay` seconds for the release.
    """

    def __init__(self, bus: str, on_prepare: Callable[[bool], None]) -> None:
        """``bus`` is "system", "session" or a D-Bus address, as phyllod's ``Config.bus``."""
        self._address = bus
        self._on_prepare = on_prepare
        self._bus: MessageBus | None = None
        self._fd: int | None = None
        self._max_delay = DEFAULT_MAX_DELAY
        # logind's unique name: only its signals count. Others may send this
        # connection a unicast signal that no match rule filters out.
        self._owner: str | None = None
        # Bumped by each release(): an Inhibit reply arriving after a release
        # is closed at once, since the release means "let this sleep happen".
        self._generation = 0
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def max_delay(self) -> float:
        """InhibitDelayMaxUSec in seconds (:data:`DEFAULT_MAX_DELAY` if unknown)."""
        return self._max_delay

    @property
    def holding(self) -> bool:
        """Whether an inhibitor file descriptor is currently held."""
        return self._fd is not None

    async def start(self) -> bool:
        """Connect, subscribe to PrepareForSleep, then take the inhibitor.

        Subscribing first means no announcement is missed once the inhibitor
        is held. Returns False, after one warning, if logind cannot be used.
        """
        if self._bus is not None or self._closed:
            raise RuntimeError("SleepWatcher.start() may be called only once")
        try:
            # Able to receive file descriptors: the inhibitor is one.
            bus = await open_bus(self._address, unix_fds=True)
        except Exception as e:  # dbus-fast raises OSError, AuthError, InvalidAddressError, …
            log.warning("sleep: cannot connect to the %s bus (%s); devices stay attached "
                        "across suspend", self._address, e)
            return False
        self._bus = bus
        bus.add_message_handler(self._on_message)
        try:
            await self._add_match(_PREPARE_RULE)
            await self._add_match(_OWNER_RULE)
            self._fd = await self._inhibit()
        except Exception as e:  # LogindError, or whatever broke the connection meanwhile
            log.warning("sleep: no delay inhibitor from logind (%s); devices stay attached "
                        "across suspend", e)
            self.close()
            return False
        await self._read_max_delay()
        self._watch = asyncio.get_running_loop().create_task(self._watch_bus(bus))
        log.info("sleep: holding a logind delay inhibitor (at most %.1f s)", self._max_delay)
        return True

    def release(self) -> None:
        """Close the inhibitor's descriptor, which lets a pending sleep proceed.

        Idempotent. It also voids a :meth:`reacquire` still waiting for logind.
        """
        self._generation += 1
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            log.debug("sleep: released the delay inhibitor")

    async def reacquire(self) -> None:
        """Take a fresh delay inhibitor after a resume; nothing if one is held.

        Failure only logs: logind refuses while a sleep is under way, and the
        next resume is another chance.
        """
        async with self._lock:  # two concurrent calls must not stack two inhibitors
            if self._fd is not None or self._bus is None or self._closed:
                return
            generation = self._generation
            try:
                fd = await self._inhibit()
            except Exception as e:  # LogindError, or a lost connection: never the caller's
                log.warning("sleep: cannot take a new delay inhibitor (%s)", e)
                return
            if generation != self._generation or self._closed:
                os.close(fd)  # released (or closed) meanwhile: that wins
                return
            self._fd = fd
            log.debug("sleep: holding a new delay inhibitor")

    def close(self) -> None:
        """Release the inhibitor and disconnect; the watcher cannot be restarted."""
        self._closed = True
        self.release()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    # ------------------------------------------------------------ internals

    async def _call(self, msg: Message) -> Message:
        """Send ``msg``; its reply, or LogindError for an error reply (its fds closed)."""
        assert self._bus is not None
        call = asyncio.ensure_future(self._bus.call(msg))
        try:
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The reply may still come, carrying an inhibitor nobody would close.
            call.add_done_callback(_close_fds_when_done)
            raise
        if reply.message_type is MessageType.ERROR:
            _close_fds(reply)
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise LogindError(f"{msg.member}: {reply.error_name}: {text}".rstrip(": "))
        return reply

    async def _add_match(self, rule: str) -> None:
        await self._call(Message(destination=DBUS_NAME, path=DBUS_PATH,
                                 interface=DBUS_NAME, member="AddMatch", signature="s",
                                 body=[rule]))

    async def _inhibit(self) -> int:
        """Inhibit(sleep, delay): the one descriptor kept out of the reply's."""
        reply = await self._call(Message(destination=LOGIND, path=PATH, interface=MANAGER,
                                         member="Inhibit", signature="ssss",
                                         body=[WHAT, WHO, WHY, MODE]))
        # With fd passing negotiated, the body holds an index into unix_fds.
        fds = list(reply.unix_fds or ())
        index = reply.body[0] if reply.signature == "h" else None
        if not isinstance(index, int) or not 0 <= index < len(fds):
            _close_fds(reply)
            raise LogindError(f"Inhibit: no file descriptor in the reply "
                              f"(signature {reply.signature!r}, {len(fds)} fds)")
        fd = fds.pop(index)
        for other in fds:
            os.close(other)
        # The reply's sender is logind's unique name, even if the call activated it.
        self._owner = reply.sender
        return fd

    async def _read_max_delay(self) -> None:
        """Read InhibitDelayMaxUSec once; without it the default stays (not fatal)."""
        try:
            reply = await self._call(Message(destination=LOGIND, path=PATH,
                                             interface=PROPERTIES, member="Get",
                                             signature="ss",
                                             body=[MANAGER, "InhibitDelayMaxUSec"]))
        except Exception as e:
            log.info("sleep: InhibitDelayMaxUSec unknown (%s); assuming %.1f s",
                     e, DEFAULT_MAX_DELAY)
            return
        value = reply.body[0] if reply.body else None
        if isinstance(value, Variant) and value.signature == "t":
            self._max_delay = value.value / 1_000_000

    def _on_message(self, msg: Message) -> bool:
        """Every message on this connection passes here; only two signals matter."""
        if msg.message_type is not MessageType.SIGNAL:
            return False
        if msg.member == "PrepareForSleep" and msg.interface == MANAGER and msg.path == PATH:
            if self._owner is None or msg.sender != self._owner or msg.signature != "b":
                log.debug("sleep: ignored PrepareForSleep from %s", msg.sender)
                return False
            before = bool(msg.body[0])
            log.info("sleep: %s", "preparing for sleep" if before else "resumed")
            try:
                self._on_prepare(before)
            except Exception:
                log.exception("sleep: the PrepareForSleep handler failed")
        elif (msg.member == NAME_OWNER_CHANGED and msg.sender == DBUS_NAME
              and msg.signature == "sss" and msg.body[0] == LOGIND):
            # A restarted logind reloads its inhibitors from /run, so the fd
            # stays valid: nothing to do but follow the new unique name.
            self._owner = msg.body[2] or None
            if self._owner is None:
                log.warning("sleep: logind left the bus")
            else:
                log.info("sleep: logind is on the bus again")
        return False

    async def _watch_bus(self, bus: MessageBus) -> None:
        """On a lost connection, let go of the inhibitor: nobody would hear the signal."""
        with contextlib.suppress(Exception):  # it raises what broke the connection
            await bus.wait_for_disconnect()
        if not self._closed:
            log.warning("sleep: lost the %s bus; devices stay attached across suspend",
                        self._address)
            self.release()
