"""phyllod-applet's wiring: bus events in, menu and notifications out, all on GLib's main loop.

Everything happens in callbacks of one Gtk main loop (no threads, no
polling): :class:`~.bus.PhyllodBus` reports objects added, removed and
changed, :class:`App` asks the pure modules what that means and hands the
answer to :class:`~.tray.Tray` and :class:`~.notifier.Notifier`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk  # noqa: E402

from phyllod import __version__  # noqa: E402
from phyllod.applet.bus import ObjectProps, PhyllodBus  # noqa: E402
from phyllod.applet.commands import (  # noqa: E402
    Answer,
    Command,
    call_for,
    describe,
    device_of,
    parse_answer_key,
)
from phyllod.applet.menu import build_menu, tray_icon  # noqa: E402
from phyllod.applet.notices import NoticeTracker, error_notice, request_notice  # noqa: E402
from phyllod.applet.notifier import Notifier  # noqa: E402
from phyllod.applet.tray import Tray  # noqa: E402
from phyllod.applet.views import DeviceView, RequestView, Snapshot  # noqa: E402
from phyllod.contract import BUS_NAME, DEVICE_IFACE, REQUEST_IFACE  # noqa: E402

log = logging.getLogger("phyllod.applet")

#: Icons in a checkout (``packaging/applet/icons``); installed ones are in hicolor.
CHECKOUT_ICONS = Path(__file__).resolve().parents[2] / "packaging" / "applet" / "icons"


class App:
    """The applet: keeps the tray menu in step with phyllod and tells the person what changed."""

    def __init__(self, icon_theme_path: str | None) -> None:
        self.tracker = NoticeTracker()
        self.notifier = Notifier()
        self.tray = Tray(self.carry_out, icon_theme_path)
        self.bus = PhyllodBus(on_ready=self._ready, on_added=self._added,
                              on_removed=self._removed, on_changed=self._changed,
                              on_owner=self._owner, on_unreachable=self._unreachable)
        self._problem = ""
        self._request_devices: dict[str, str] = {}  # request path -> its device's path
        self._refresh_pending = False
        self.refresh()

    def start(self) -> None:
        self.bus.start()

    # Bus events.

    def _ready(self) -> None:
        """Connected: what is there now is the baseline, told about only if it is a question.

        Devices already present say nothing (only changes are news); a request
        already open is still waiting for the person, so it is asked.
        """
        owner = self.bus.owner
        log.info("watching %s (owner %s)", BUS_NAME, owner or "none: phyllod is not running")
        for path, interfaces in self.bus.objects().items():
            if DEVICE_IFACE in interfaces:
                self.tracker.observe(DeviceView.from_properties(path, interfaces[DEVICE_IFACE]),
                                     quiet=True)
            if REQUEST_IFACE in interfaces:
                self._ask(RequestView.from_properties(path, interfaces[REQUEST_IFACE]))
        self.schedule_refresh()

    def _added(self, path: str, interfaces: ObjectProps) -> None:
        if DEVICE_IFACE in interfaces:
            self._device_changed(DeviceView.from_properties(path, interfaces[DEVICE_IFACE]))
        if REQUEST_IFACE in interfaces:
            self._ask(RequestView.from_properties(path, interfaces[REQUEST_IFACE]))
        self.schedule_refresh()

    def _removed(self, path: str, interfaces: ObjectProps, owner_gone: bool) -> None:
        if DEVICE_IFACE in interfaces and not owner_gone:
            self.tracker.forget(DeviceView.from_properties(path, interfaces[DEVICE_IFACE]).id)
        if REQUEST_IFACE in interfaces:
            self.notifier.close(path)
            # Kept a moment longer than the request: its answer's reply comes after.
            GLib.timeout_add_seconds(60, self._forget_request, path)
        self.schedule_refresh()

    def _forget_request(self, path: str) -> bool:
        self._request_devices.pop(path, None)
        return GLib.SOURCE_REMOVE

    def _changed(self, path: str, interface: str) -> None:
        interfaces = self.bus.objects().get(path, {})
        if interface == DEVICE_IFACE and DEVICE_IFACE in interfaces:
            self._device_changed(DeviceView.from_properties(path, interfaces[DEVICE_IFACE]))
        elif interface == REQUEST_IFACE and REQUEST_IFACE in interfaces:
            self._ask(RequestView.from_properties(path, interfaces[REQUEST_IFACE]))
        self.schedule_refresh()

    def _owner(self, owner: str | None) -> None:
        log.info("phyllod %s", f"is running as {owner}" if owner else "stopped")
        self.schedule_refresh()

    def _unreachable(self, message: str) -> None:
        log.warning("cannot watch phyllod: %s", message)
        self._problem = message
        self.schedule_refresh()

    def _device_changed(self, device: DeviceView) -> None:
        notice = self.tracker.observe(device)
        if notice is not None:
            self.notifier.show(notice, tag=device.path)

    def _ask(self, request: RequestView) -> None:
        self._request_devices[request.path] = request.device

        def answer(key: str) -> None:
            parsed = parse_answer_key(key)
            if parsed is not None:
                self.carry_out(Answer(request.path, *parsed))

        self.notifier.show(request_notice(request), tag=request.path, on_action=answer)

    # Out.

    def carry_out(self, command: Command) -> None:
        """Carry out a menu entry's or notification button's command; errors become notices."""
        tag = device_of(command, self._request_devices)
        self.bus.call(call_for(command),
                      lambda name, message: self.notifier.show(
                          error_notice(describe(command), name, message), tag=tag))

    def schedule_refresh(self) -> None:
        """Rebuild the menu once the current burst of signals has been handled."""
        if not self._refresh_pending:
            self._refresh_pending = True
            GLib.idle_add(self.refresh)

    def refresh(self) -> bool:
        self._refresh_pending = False
        if self.bus.owner is None:
            snapshot = Snapshot(connected=False, problem=self._problem)
        else:
            snapshot = Snapshot.from_objects(self.bus.objects())
        self.tray.show(build_menu(snapshot), tray_icon(snapshot))
        return GLib.SOURCE_REMOVE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="phyllod-applet",
        description="Tray menu and notifications for phyllod (USB/PCI passthrough to guests).")
    parser.add_argument("--version", action="version", version=f"phyllod-applet {__version__}")
    parser.add_argument("--icon-theme-path", metavar="DIR",
                        help="extra directory to find the icons in (default: the checkout's, "
                             "when run from one)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="phyllod-applet: %(message)s")
    ok, _ = Gtk.init_check(sys.argv[:1])
    if not ok:
        print("phyllod-applet: cannot open the display (is DISPLAY or WAYLAND_DISPLAY set?)",
              file=sys.stderr)
        return 1
    icons = args.icon_theme_path or (str(CHECKOUT_ICONS) if CHECKOUT_ICONS.is_dir() else None)
    app = App(icons)
    app.start()
    for signum in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, _quit)
    Gtk.main()
    app.notifier.shutdown()
    return 0


def _quit() -> bool:
    Gtk.main_quit()
    return GLib.SOURCE_REMOVE
