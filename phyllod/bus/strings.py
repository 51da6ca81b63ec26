"""Keep dbus-fast releases that miscount non-ASCII strings from breaking the bus.

dbus-fast 1.84 (Debian 12's python3-dbus-fast) writes a string's length as its
number of characters, not of UTF-8 bytes. A message carrying any non-ASCII
string (a device called "Müller", or the U+FFFD phyllod puts in place of a
control character a device sent) is then malformed; dbus-daemon drops the
connection that sent it, and phyllod, off the bus, exits and is restarted,
again and again while that device is plugged in. Found by the lab's hostile
serial test.

Where the installed release has the bug (checked once, by marshalling one
string), every message phyllod sends is rebuilt with its strings written in
ASCII with backslash escapes (``M\\xfcller``): readable and well-formed,
where a fixed release sends the text as it is.

Strings are also bounded both ways (:func:`oversized` on the way in,
:func:`phyllod.core.bounds.bounded` on the way out): any local user may call
phyllod, and one reply past the bus's message limit (32 MiB on the system bus)
makes dbus-daemon drop phyllod's connection. Every string
phyllod accepts is short (a device id, a path, a guest name, an interface
name: 255 characters at most by the D-Bus specification, 36 for a UUID), so an
argument over :data:`MAX_ARGUMENT` is refused before any work, and every text
phyllod sends back is cut to a fixed bound, whatever the daemon's core wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast._private.marshaller import Marshaller

from phyllod.core.bounds import bounded


def _miscounts() -> bool:
    marshaller = Marshaller("s", ["\u00e9"])
    written = marshaller.marshall()  # the buffer in 5.x; 1.84 returns None and keeps it
    data = bytes(written if written is not None else marshaller.buffer)
    return data[:4] != (2).to_bytes(4, "little")


#: Whether the installed dbus-fast writes wrong lengths for non-ASCII strings.
MISCOUNTS = _miscounts()


def ascii_text(value: Any) -> Any:
    """``value`` (a message body or part of one) with every string made ASCII."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("ascii", "backslashreplace").decode()
    if isinstance(value, Variant):
        return Variant(value.signature, ascii_text(value.value))
    if isinstance(value, list):
        return [ascii_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(ascii_text(v) for v in value)
    if isinstance(value, dict):
        return {ascii_text(k): ascii_text(v) for k, v in value.items()}
    return value


def ascii_message(msg: Message) -> Message:
    """``msg`` itself when its body is all ASCII, else a copy whose strings are."""
    body = ascii_text(msg.body)
    if body == msg.body:
        return msg
    return Message(destination=msg.destination, path=msg.path, interface=msg.interface,
                   member=msg.member, message_type=msg.message_type, flags=msg.flags,
                   error_name=msg.error_name, reply_serial=msg.reply_serial,
                   sender=msg.sender, unix_fds=msg.unix_fds, signature=msg.signature,
                   body=body, serial=msg.serial)


def guard_writer(writer: Any) -> None:
    """Make a connected bus's writer send only well-formed messages (if needed)."""
    if not MISCOUNTS or getattr(writer, "_phyllod_ascii", False):
        return
    schedule = writer.schedule_write

    def schedule_write(msg: Message | None = None, future: Any = None) -> None:
        schedule(ascii_message(msg) if msg is not None else None, future)

    writer.schedule_write = schedule_write
    writer._phyllod_ascii = True


#: Characters in any one string argument or in a call's object path: 16 times the
#: longest name the D-Bus specification allows (255), far below the bus's limit,
#: so that an error quoting any of it stays small.
MAX_ARGUMENT = 4096
#: Values in one call's body, every container flattened. phyllod's methods take
#: at most two strings and a boolean; Properties.Set a variant.
MAX_VALUES = 64
#: Characters of Explain's answer (a device's whole story, findings included).
MAX_EXPLAIN = 65536


def oversized(path: str | None, body: Sequence[Any]) -> str:
    """Why a call is too big to serve (its object path or body), or "" if it is not.

    Walks the body once, stopping at the first value over a bound, so a
    hostile call costs no more than reading it did.
    """
    if path is not None and len(path) > MAX_ARGUMENT:
        return f"the object path has {len(path)} characters (at most {MAX_ARGUMENT})"
    pending: list[Any] = list(body)
    seen = 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > MAX_VALUES:
            return f"the call carries more than {MAX_VALUES} values"
        if isinstance(value, str | bytes):
            if len(value) > MAX_ARGUMENT:
                return (f"an argument has {len(value)} characters "
                        f"(at most {MAX_ARGUMENT})")
        elif isinstance(value, Variant):
            pending.append(value.value)
        elif isinstance(value, dict):
            if len(value) > MAX_VALUES:
                return f"the call carries more than {MAX_VALUES} values"
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            if len(value) > MAX_VALUES:
                return f"the call carries more than {MAX_VALUES} values"
            pending.extend(value)
    return ""


#: The integer D-Bus types phyllod publishes, and the values each can carry.
_RANGES = {"y": (0, 2**8), "n": (-2**15, 2**15), "q": (0, 2**16), "i": (-2**31, 2**31),
           "u": (0, 2**32), "x": (-2**63, 2**63), "t": (0, 2**64)}


def fit(signature: str, value: Any) -> Any:
    """``value`` ready to be sent as D-Bus type ``signature``, its text bounded; or None
    if it cannot be (a number out of the type's range, a value of another kind).

    Types phyllod never publishes pass unchanged.
    """
    if signature in _RANGES:
        low, high = _RANGES[signature]
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value < high
        return value if ok else None
    if signature == "b":
        return value if isinstance(value, bool) else None
    if signature in ("s", "o"):
        return (bounded(value) if signature == "s" else value) if isinstance(value, str) \
            else None
    if signature in ("as", "ao"):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            return None
        return [fit(signature[1], v) for v in value]
    if signature == "a{ss}":
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return None
        return {bounded(k): bounded(v) for k, v in value.items()}
    return value


def marshal_body(signature: str, value: Any) -> bytes:
    """One value of type ``signature`` as the body of a message, ready to be sent
    to any number of callers (:class:`PremarshalledReply`)."""
    marshaller = Marshaller(signature, [ascii_text(value) if MISCOUNTS else value])
    written = marshaller.marshall()  # the buffer in 5.x; 1.84 returns None and keeps it
    return bytes(written if written is not None else marshaller.buffer)


class PremarshalledReply(Message):
    """A method return whose body was marshalled once (:func:`marshal_body`).

    GetManagedObjects' answer with 500 devices is about 400 KiB, and
    marshalling it took some 15 ms of phyllod's loop per call; served to a
    flood of callers, that was all the loop did. dbus-fast marshals a message
    when it queues it (``_marshall``): this one marshals a header for an
    empty body of the same type, and puts the ready body after it.
    """

    def __init__(self, reply_serial: int, destination: str, signature: str, body: bytes,
                 empty: Any) -> None:
        super().__init__(message_type=MessageType.METHOD_RETURN, reply_serial=reply_serial,
                         destination=destination, signature=signature, body=[empty])
        self.ready_body = body

    def _marshall(self, negotiate_unix_fd: bool = False) -> bytearray:
        small = super()._marshall(negotiate_unix_fd)
        header = bytearray(small[:len(small) - int.from_bytes(small[4:8], "little")])
        header[4:8] = len(self.ready_body).to_bytes(4, "little")
        return header + self.ready_body
