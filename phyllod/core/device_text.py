"""The one cleaner of text a device says about itself (serial, names, labels).

What a USB device reports (serial, manufacturer, product), an input device's
name and a filesystem label are chosen by whoever made the device: the udev
adapter and the sysfs reader both pass such text through :func:`clean`
before anything keeps it, so logs, ``check-policy``, the bus and the applet
get the same, harmless string for the same device.

The character class is Python's "printable" (``str.isprintable``), the one
``phyllodctl`` escapes by (ctl_format.escape): C0 and C1 controls and DEL,
format characters (bidi controls U+061C, U+200E/F, U+202A-E, U+2066-9,
zero-width space and joiners, the BOM, soft hyphen), line and paragraph
separators U+2028/9, surrogates (lone ones, and what undecodable bytes
become), private-use and unassigned code points. Each becomes U+FFFD, so a
person still sees that something was there; any other space becomes a plain
space. Pure: no I/O.
"""

from __future__ import annotations

import unicodedata

#: Characters kept of one device string: more is no name, and one 64 KiB
#: serial must not make every bus reply and log line 64 KiB.
MAX_TEXT = 256
REPLACEMENT = "\ufffd"
#: UTF-8 needs at most 4 bytes a character: this many bytes always hold
#: ``limit`` whole characters, so no input is decoded beyond what is kept.
_BYTES_PER_CHAR = 4


def clean(raw: bytes | str | None, limit: int = MAX_TEXT) -> str:
    """``raw`` decoded, stripped, each unprintable character made U+FFFD, cut to ``limit``.

    A NUL ends the text, as it ends the C string libudev reads an attribute
    as (so a file read whole says the same). Bytes that are not UTF-8 become
    U+FFFD (one per invalid sequence), as do the lone surrogates a
    ``surrogateescape`` decoder leaves in a str.
    """
    if not raw:
        return ""
    if isinstance(raw, bytes):
        raw = raw[:(limit + 1) * _BYTES_PER_CHAR].split(b"\0", 1)[0]
        raw = raw.decode("utf-8", errors="replace")
    else:
        raw = raw[:(limit + 1) * _BYTES_PER_CHAR].split("\0", 1)[0]
    text = raw.strip()
    if not text.isprintable():
        text = "".join(_printable(c) for c in text)
    return text[:limit]


def _printable(c: str) -> str:
    """``c`` if printable; a space for any other space separator (no-break, ideographic);
    U+FFFD for the rest (tab and newline included: a device string is one line)."""
    if c.isprintable():
        return c
    return " " if unicodedata.category(c) == "Zs" else REPLACEMENT
