"""The errors a caller of phyllod can get, one class per outcome a client handles.

The D-Bus adapter turns each class into ``me.phyllo.Phyllod1.Error.<ClassName>``
in one place (firewalld's idea, without its numeric codes); the daemon raises
them without knowing about D-Bus.
"""

from __future__ import annotations


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
