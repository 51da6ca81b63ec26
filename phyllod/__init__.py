"""phyllod: policy-driven USB and PCI passthrough for libvirt guests.

The folders are the rooms of one loop (docs/architecture.md):
:mod:`.core` decides, pure (model, policy, the precedence ladder, reconcile,
safety verdicts, hostdev XML, explain); :mod:`.host` holds the adapters over
the machine (udev, libvirt, sysfs, systemd, the state store, USB reset, the
policy files); :mod:`.bus` every dbus-fast line of the daemon (its service,
polkit, logind); :mod:`.service` the daemon, a root that wires one part per
kind of state; :mod:`.contract` the D-Bus names the daemon and both clients
share; :mod:`.cli` the ``phyllod`` command; :mod:`.ctl` ``phyllodctl`` and
:mod:`.applet` the desktop applet, clients of the bus only.
"""

__version__ = "0.1.0"
