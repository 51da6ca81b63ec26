"""The tray icon and its menu: Ayatana AppIndicator rendering :mod:`.menu`'s entries.

AppIndicator exports the icon as a StatusNotifierItem and the Gtk.Menu over
com.canonical.dbusmenu where a StatusNotifierWatcher runs (KDE Plasma, GNOME
with the AppIndicator extension, most panels), and falls back to an XEmbed
tray icon elsewhere; either way the host shows the same Gtk.Menu.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("AyatanaAppIndicator3", "0.1")
from gi.repository import AyatanaAppIndicator3 as AppIndicator  # noqa: E402
from gi.repository import Gtk  # noqa: E402

from phyllod.applet.commands import Command  # noqa: E402
from phyllod.applet.menu import Entry, TrayIcon  # noqa: E402

ID = "phyllod-applet"


class Tray:
    """One AppIndicator whose menu is rebuilt from scratch on every change (it is small)."""

    def __init__(self, on_command: Callable[[Command], None],
                 icon_theme_path: str | None = None) -> None:
        self._on_command = on_command
        self.indicator = AppIndicator.Indicator.new(
            ID, "phyllod-offline", AppIndicator.IndicatorCategory.HARDWARE)
        if icon_theme_path:
            self.indicator.set_icon_theme_path(icon_theme_path)
        self.indicator.set_title("phyllod")
        self.indicator.set_attention_icon_full("phyllod-attention", "phyllod is asking")
        self.indicator.set_status(AppIndicator.IndicatorStatus.ACTIVE)

    def show(self, entries: Iterable[Entry], icon: TrayIcon) -> None:
        """Replace the menu and set the icon."""
        menu = Gtk.Menu()
        self._fill(menu, entries)
        menu.show_all()
        self.indicator.set_menu(menu)
        self.indicator.set_icon_full(icon.icon, icon.title)
        self.indicator.set_title(icon.title)
        self.indicator.set_status(AppIndicator.IndicatorStatus.ATTENTION
                                  if icon.status == "attention"
                                  else AppIndicator.IndicatorStatus.ACTIVE)

    def _fill(self, menu: Gtk.Menu, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if entry.separator:
                menu.append(Gtk.SeparatorMenuItem())
                continue
            item = Gtk.MenuItem.new_with_label(entry.label)
            item.set_sensitive(entry.sensitive)
            if entry.children:
                submenu = Gtk.Menu()
                self._fill(submenu, entry.children)
                item.set_submenu(submenu)
            elif entry.command is not None:
                command = entry.command
                item.connect("activate", lambda _item, c=command: self._on_command(c))
            menu.append(item)
