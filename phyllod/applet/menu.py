"""The tray menu and icon as data: which entries, with which labels and commands.

:mod:`.tray` renders a list of :class:`Entry` as a Gtk.Menu (exported over
dbusmenu by AppIndicator); everything a person sees in the menu is decided
here, from a :class:`~phyllod.applet.views.Snapshot`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from phyllod.applet.commands import Answer, Attach, ClearOverride, Command, Forget, KeepOnHost
from phyllod.applet.views import DeviceView, RequestView, Snapshot

NOT_RUNNING = "phyllod is not running"
NO_DEVICES = "No devices"
#: Reasons are long sentences; menus are narrow.
WRAP = 60


@dataclass(frozen=True)
class Entry:
    """One menu item: a label, and a command or a submenu (or neither: information)."""

    label: str
    command: Command | None = None
    children: tuple[Entry, ...] = ()
    separator: bool = False

    @property
    def sensitive(self) -> bool:
        return self.command is not None or bool(self.children)


SEPARATOR = Entry("", separator=True)


@dataclass(frozen=True)
class TrayIcon:
    """The icon name, AppIndicator status (``active``/``attention``) and accessible title."""

    icon: str
    status: str
    title: str


def tray_icon(snapshot: Snapshot) -> TrayIcon:
    """Offline when phyllod is not running, attention while a request waits for an answer."""
    if not snapshot.connected:
        return TrayIcon("phyllod-offline", "active", f"phyllod: {NOT_RUNNING}")
    if snapshot.requests:
        n = len(snapshot.requests)
        return TrayIcon("phyllod-attention", "attention",
                        f"phyllod: {n} device{'s' if n > 1 else ''} waiting for an answer")
    attached = sum(1 for d in snapshot.devices if d.state == "attached")
    return TrayIcon("phyllod", "active", f"phyllod: {attached} of {len(snapshot.devices)} "
                    "devices in guests")


def device_label(device: DeviceView) -> str:
    """``QEMU USB Keyboard (usb:1-2): attached to work``."""
    where = {"attached": " to", "attaching": " to", "pending": " for", "failed": " for",
             "sleeping": " for", "detaching": " from"}.get(device.state, "")
    guest = f"{where} {device.guest}" if device.guest and where else ""
    return f"{device.title} ({device.id}): {device.state}{guest}"


def _info(label: str, value: str) -> tuple[Entry, ...]:
    lines = textwrap.wrap(f"{label}: {value}", WRAP, subsequent_indent="    ") or [label]
    return tuple(Entry(line) for line in lines)


def device_entries(device: DeviceView, running_guests: tuple[str, ...]) -> tuple[Entry, ...]:
    """The submenu of one device: what it is and where, then what can be done with it."""
    info: list[Entry] = [*_info("State", device.state)]
    if device.guest:
        info += _info("Guest", device.guest)
    if device.rule:
        info += _info("Rule", device.rule)
    if device.reason:
        info += _info("Reason", device.reason)
    if device.override:
        target = f" ({device.override_guest})" if device.override_guest else ""
        info += _info("Manual override", f"{device.override}{target}")
    if device.remembered:
        info += _info("Remembered answer", device.remembered_guest or "keep on the host")
    commands = [Entry(f"Attach to {guest}", Attach(device.path, guest))
               for guest in running_guests
               if not (device.state == "attached" and device.guest == guest)]
    if device.state != "host" or device.override != "host":
        commands.append(Entry("Keep on the host", KeepOnHost(device.path)))
    if device.override:
        commands.append(Entry("Let the policy decide", ClearOverride(device.path)))
    if device.remembered:
        commands.append(Entry("Forget remembered answer", Forget(device.identity)))
    return (*info, SEPARATOR, *commands) if commands else tuple(info)


def request_entries(request: RequestView) -> tuple[Entry, ...]:
    """The answers to one request, in the order the notification offers them."""
    entries = [Entry(f"Send to {g}", Answer(request.path, g)) for g in request.candidates]
    entries.append(Entry("Keep on the host", Answer(request.path, "")))
    entries += [Entry(f"Always send to {g}", Answer(request.path, g, True))
                for g in request.candidates]
    entries.append(Entry("Always keep on the host", Answer(request.path, "", True)))
    return tuple(entries)


def build_menu(snapshot: Snapshot) -> tuple[Entry, ...]:
    """The whole tray menu: open requests on top, then one submenu per present device."""
    if not snapshot.connected:
        detail = _info("Cannot reach the system bus", snapshot.problem) if snapshot.problem else ()
        return (Entry(NOT_RUNNING), *detail)
    entries: list[Entry] = []
    for request in snapshot.requests:
        entries.append(Entry(f"Where should {request.description} go?",
                             children=request_entries(request)))
    if entries:
        entries.append(SEPARATOR)
    if snapshot.policy_status != "ok":
        entries += _info("Policy error", snapshot.policy_error.splitlines()[0]
                         if snapshot.policy_error else "see phyllodctl")
    if not snapshot.devices:
        entries.append(Entry(NO_DEVICES))
    for device in snapshot.devices:
        entries.append(Entry(device_label(device),
                             children=device_entries(device, snapshot.running_guests)))
    return tuple(entries)
