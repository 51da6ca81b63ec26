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
"""

from __future__ import annotations

from typing import Any

from dbus_fast import Message, Variant
from dbus_fast._private.marshaller import Marshaller


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
