"""What a click asks phyllod to do: one D-Bus method call per command.

Menu entries and notification buttons both carry a :data:`Command`; the bus
adapter turns it into the call with :func:`call_for`. Keeping the mapping here
means the tests check exactly which method, object and arguments a button
sends, without a bus. (A command is not a policy action: "action" is the
policy's verb, attach/ignore/deny/ask.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from phyllod.contract import DEVICE_IFACE, MANAGER_IFACE, REQUEST_IFACE, ROOT


@dataclass(frozen=True)
class Call:
    """A method call on phyllod: object, interface, method, GVariant signature, arguments."""

    path: str
    interface: str
    method: str
    signature: str
    args: tuple[str | bool, ...]


@dataclass(frozen=True)
class Attach:
    """Manual override: put the device in ``guest`` (``Device.Attach``)."""

    device: str  # object path
    guest: str


@dataclass(frozen=True)
class KeepOnHost:
    """Manual override: keep the device on the host (``Device.Detach``)."""

    device: str


@dataclass(frozen=True)
class ClearOverride:
    """Let the policy decide again (``Device.ClearOverride``)."""

    device: str


@dataclass(frozen=True)
class Forget:
    """Forget the remembered answer for a device identity (``Manager.Forget``)."""

    identity: str


@dataclass(frozen=True)
class Answer:
    """Answer an ask request: ``guest`` or ``""`` for the host, remembered or not."""

    request: str  # object path
    guest: str
    remember: bool = False


Command = Attach | KeepOnHost | ClearOverride | Forget | Answer


def call_for(command: Command) -> Call:
    """The D-Bus call that carries out ``command`` (docs/dbus-api.md)."""
    match command:
        case Attach(device, guest):
            return Call(device, DEVICE_IFACE, "Attach", "(s)", (guest,))
        case KeepOnHost(device):
            return Call(device, DEVICE_IFACE, "Detach", "()", ())
        case ClearOverride(device):
            return Call(device, DEVICE_IFACE, "ClearOverride", "()", ())
        case Forget(identity):
            return Call(ROOT, MANAGER_IFACE, "Forget", "(s)", (identity,))
        case Answer(request, guest, remember):
            return Call(request, REQUEST_IFACE, "Answer", "(sb)", (guest, remember))
    raise TypeError(f"not a command: {command!r}")


def describe(command: Command) -> str:
    """A few words naming what was attempted, for an error notification's summary."""
    match command:
        case Attach(_, guest):
            return f"attach to {guest}"
        case KeepOnHost():
            return "keep on the host"
        case ClearOverride():
            return "let the policy decide"
        case Forget():
            return "forget the remembered answer"
        case Answer(_, guest, remember):
            where = f"send to {guest}" if guest else "keep on the host"
            return f"always {where}" if remember else where
    raise TypeError(f"not a command: {command!r}")


def device_of(command: Command, request_devices: Mapping[str, str]) -> str | None:
    """The device object a command is about (an answer's through its request), if any.

    A refusal is shown in the place of that device's last notification, so
    that "could not be passed" from the state change and "could not attach"
    from the call do not pile up as two bubbles about one thing.
    """
    match command:
        case Attach(device) | KeepOnHost(device) | ClearOverride(device):
            return device
        case Answer(request):
            return request_devices.get(request)
    return None


# Notification action keys (the Desktop Notifications spec's word for a button):
# the notification server hands back only a string.

def answer_key(guest: str, remember: bool) -> str:
    """The notification action key for an answer (``send:work``, ``always-host``)."""
    return ("always-" if remember else "") + (f"send:{guest}" if guest else "host")


def parse_answer_key(key: str) -> tuple[str, bool] | None:
    """``(guest, remember)`` from :func:`answer_key`'s output; None for other keys."""
    remember = key.startswith("always-")
    rest = key.removeprefix("always-")
    if rest == "host":
        return ("", remember)
    if rest.startswith("send:") and len(rest) > len("send:"):
        return (rest.removeprefix("send:"), remember)
    return None
