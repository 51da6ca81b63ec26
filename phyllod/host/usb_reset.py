"""USB port reset through usbfs, before a device is handed to a guest.

Some devices come back from a guest in a state their next owner cannot use,
Bluetooth adapters above all (a controller left half set up by the previous
guest's driver no longer comes up). A port reset (``USBDEVFS_RESET``, what
``usbreset`` does) makes the device start over as a replug would, without
anyone touching it. The device keeps its bus and device number unless its
descriptors changed (the kernel then re-enumerates it as a new device), so a
hostdev naming either still matches in the usual case. Host drivers bound to
its interfaces are unbound and bound again around the reset.

A thin adapter: one ioctl on the device node, which udev creates as
/dev/bus/usb/BBB/DDD (bus and device number, three digits, as the kernel
names them). It needs write access to that node (root), and blocks while the
port resets: call it where a blocking call is allowed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

#: ``_IO('U', 20)`` from linux/usbdevice_fs.h: no argument, no direction bits.
USBDEVFS_RESET = 0x5514

_DEV_ROOT = Path("/dev/bus/usb")


class UsbResetError(Exception):
    """The reset could not be done; the message names the device node and why."""


def usb_device_node(busnum: int, devnum: int, dev_root: Path = _DEV_ROOT) -> Path:
    """The usbfs node of the device at ``busnum``/``devnum``: ``dev_root/001/004``.

    Raises :class:`UsbResetError` for numbers the kernel never gives (they
    start at 1; 0 is what an unreadable ``busnum``/``devnum`` turns into).
    """
    if busnum < 1 or devnum < 1:
        raise UsbResetError(f"no USB device node for bus {busnum}, device {devnum}")
    return dev_root / f"{busnum:03d}" / f"{devnum:03d}"


def reset_usb_device(busnum: int, devnum: int, dev_root: Path = _DEV_ROOT) -> None:
    """Reset the USB device at ``busnum``/``devnum`` as a replug would.

    Raises :class:`UsbResetError` when the node cannot be opened (gone,
    replugged under a new number, no permission) or the kernel refuses the
    reset (ENOTTY on anything that is no usbfs node; ENODEV if it left).
    """
    node = usb_device_node(busnum, devnum, dev_root)
    try:
        fd = os.open(node, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UsbResetError(f"cannot open USB device node {node}: {e.strerror}") from e
    try:
        fcntl.ioctl(fd, USBDEVFS_RESET, 0)
    except OSError as e:
        raise UsbResetError(f"cannot reset USB device {node}: {e.strerror}") from e
    finally:
        os.close(fd)
