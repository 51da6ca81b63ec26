"""What the udev adapter reads of a USB device's sysfs directory itself, past libudev.

A part of host/udev_devices: libudev returns attributes as C strings (cut at
the first NUL, so no binary ``descriptors``) and knows nothing of a port's
``peer`` link, so these two are read here, bounded, from the device's place.
So are the device's text attributes: through pyudev each costs twice the
read itself (0.18 against 0.09 ms in the lab's L1, eight of them on every
plug's path: issue 18).
"""

from __future__ import annotations

import os
import re

from phyllod.core import usb_descriptors
from phyllod.host.sysfs_paths import MAX_ATTRIBUTE


def _read(path: str, limit: int) -> bytes | None:
    """At most ``limit`` bytes of the file at ``path`` in one ``read(2)``; None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def attribute(sys_path: str, name: str) -> bytes:
    """A text attribute of the device (``serial``), b"" if absent: the bytes as
    libudev would give them (core/device_text's ``clean`` cuts at a NUL and strips)."""
    return _read(os.path.join(sys_path, name), MAX_ATTRIBUTE) or b""


def descriptors(sys_path: str) -> bytes | None:
    """The device's raw ``descriptors`` (core/usb_descriptors reads them); None if
    unreadable. Read once the kernel probed the device: before, the read waits for
    the probe."""
    return _read(os.path.join(sys_path, "descriptors"), usb_descriptors.MAX_DESCRIPTORS_BYTES)


#: A hub port's directory: ``usb2-port3`` (root hub of bus 2) or ``2-3.1-port4``.
_PORT_DIR = re.compile(r"(?:usb([0-9]{1,3})|([0-9]{1,3}-[0-9]{1,3}(?:\.[0-9]{1,3}){0,6}))"
                       r"-port([0-9]{1,3})")
_PORT_PATH = re.compile(r"[0-9]{1,3}-[0-9]{1,3}(?:\.[0-9]{1,3}){0,6}")


def _port_of(port_dir: str) -> str:
    """The path of the device a hub port holds: ``usb2-port3`` → ``2-3``; "" if no port."""
    m = _PORT_DIR.fullmatch(port_dir)
    if m is None:
        return ""
    bus, hub, number = m.groups()
    return f"{bus}-{number}" if bus else f"{hub}.{number}"


def peer_ports(port: str, sys_path: str) -> tuple[str, ...]:
    """The other names of the physical port of the device at ``port`` (Documentation/
    ABI/testing/sysfs-bus-usb, ``peer``): a USB 3 port is a USB 2 port and a
    SuperSpeed port, and the kernel links the two halves. The device's own port
    and each hub port above it are followed, so a device behind a USB 2 hub in
    the SuperSpeed half's physical port is also named under that half
    (``1-3.1.4`` gives ``2-3.1.4`` when port ``1-3``'s peer is ``2-3``).
    """
    if not _PORT_PATH.fullmatch(port):
        return ()
    bus, _, chain = port.partition("-")
    hops = chain.split(".")
    parts = sys_path.split("/")
    found: list[str] = []
    for depth in range(len(hops), 0, -1):
        above = f"{bus}-{'.'.join(hops[:depth])}"
        if above not in parts:
            continue
        here = "/".join(parts[:parts.index(above) + 1])
        try:
            peer = _port_of(os.path.basename(os.readlink(os.path.join(here, "port", "peer"))))
        except OSError:
            continue
        if peer and peer != above:
            rest = ".".join(hops[depth:])
            found.append(f"{peer}.{rest}" if rest else peer)
    return tuple(dict.fromkeys(found))
