"""phyllod-applet: the desktop side of phyllod (tray menu and notifications).

It is a client of phyllod's system-bus API only (docs/dbus-api.md), written
with PyGObject and nothing else outside the standard library but the contract's
names (:mod:`phyllod.contract`, itself standard library only, shipped in the
phyllod package the applet's package depends on), so it runs with a
distribution's own python3-gi as well as in the project's virtualenv. The
decisions (menu entries, notifications, texts) live in pure modules
(:mod:`.views`, :mod:`.commands`, :mod:`.menu`, :mod:`.notices`) that are tested
without a display; :mod:`.bus`, :mod:`.tray`, :mod:`.notifier` and :mod:`.app`
are the thin GObject adapters around them.
"""
