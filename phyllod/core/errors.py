"""The errors a caller of phyllod can get, one class per outcome a client handles.

The D-Bus adapter turns each class into ``me.phyllo.Phyllod1.Error.<ClassName>``
in one place (firewalld's idea, without its numeric codes); the daemon raises
them without knowing about D-Bus.
"""

from __future__ import annotations

#: How many characters of a caller's argument an error message quotes.
EXCERPT = 64


def excerpt(value: str, limit: int = EXCERPT) -> str:
    """A caller's argument as an error message quotes it: never whole if long.

    repr() escapes control, bidi and other unprintable characters, so the
    quote can neither reorder nor split a terminal or journal line; a long
    argument is cut, and its length said, so an error never repeats megabytes
    a caller sent (the bus drops a connection whose message is too large).
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


class PhyllodError(Exception):
    """Base class: the message is shown to the caller as is."""


class NotAuthorized(PhyllodError):
    """polkit said no, or, without polkit, the caller is not root."""


class NoSuchDevice(PhyllodError):
    """The name given designates no present device, or several."""


class NoSuchGuest(PhyllodError):
    """No guest with that name or UUID is defined."""


class NoSuchRequest(PhyllodError):
    """The request was answered, expired, or withdrawn because the device left."""


class Denied(PhyllodError):
    """A ``deny`` rule (or a safety verdict) forbids what was asked."""


class Busy(PhyllodError):
    """Another manual call for the same device is still being carried out."""


class Failed(PhyllodError):
    """The request was valid but could not be carried out; the message says why."""
