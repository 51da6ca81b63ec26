"""USB devices in a umockdev testbed: real libudev, real uevents, mocked sysfs.

The test process must run under ``umockdev-wrapper`` (scripts/test does);
children that should see the testbed get ``UMOCKDEV_DIR`` and the preload.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402

PRELOAD = "libumockdev-preload.so.0"


def available() -> str:
    """Why umockdev cannot be used in this process, or "" if it can."""
    if PRELOAD not in os.environ.get("LD_PRELOAD", ""):
        return "not running under umockdev-wrapper (use scripts/test)"
    return ""


#: Where the kernel keeps how many datagrams a unix socket may hold unread.
DGRAM_QLEN = "/proc/sys/net/unix/max_dgram_qlen"
#: What systemd sets on every machine it boots (its sysctl.d/50-default.conf).
ROOMY_QLEN = 512


def roomy_uevent_queues() -> None:
    """Let each listening socket hold ``ROOMY_QLEN`` of umockdev's uevents.

    umockdev hands uevents to every monitor in the testbed (each of the
    daemon's: udev's, the kernel's, the block devices') as unix datagrams,
    without waiting: a monitor whose queue is full makes umockdev abort the
    test process ("sendmsg failed: Resource temporarily unavailable"). A
    machine booted without systemd keeps the kernel's default of 10, which a
    daemon busy in one turn over 500 devices fills; the real kernel's netlink
    sockets queue by bytes (hundreds of uevents). The limit is read when a
    socket is made, so it is raised before the first testbed, as root only.
    """
    try:
        with open(DGRAM_QLEN) as f:
            if int(f.read()) >= ROOMY_QLEN:
                return
        with open(DGRAM_QLEN, "w") as f:
            f.write(str(ROOMY_QLEN))
    except (OSError, ValueError):
        pass  # not root, or no such knob: the small queues stay, as they were


def new_testbed() -> UMockdev.Testbed:
    """A new umockdev testbed, the only one alive (uevent queues made roomy first).

    A testbed an earlier test left unreachable (in a reference cycle) unsets
    UMOCKDEV_DIR when the garbage collector finalizes it; were that to happen
    after this one is made, libudev would see the real /sys from then on (a
    test that finds no devices, now and then). So the dead ones go first.
    """
    gc.collect()
    roomy_uevent_queues()
    return UMockdev.Testbed.new()


class UsbTestbed:
    def __init__(self) -> None:
        self.tb = new_testbed()
        self.paths: dict[str, str] = {}
        self.hubs: set[int] = set()

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to see this testbed."""
        return {"UMOCKDEV_DIR": self.tb.get_root_dir(), "LD_PRELOAD": PRELOAD}

    def _hub(self, bus: int) -> str:
        name = f"usb{bus}"
        if bus not in self.hubs:
            self.hubs.add(bus)
            self.paths[name] = self.tb.add_device(
                "usb", name, None, ["busnum", str(bus), "devnum", "1", "bDeviceClass", "09"],
                ["DEVTYPE", "usb_device", "BUSNUM", f"{bus:03d}", "DEVNUM", "001"])
        return self.paths[name]

    def plug(self, port: str, devnum: int, vendor: str = "0627", product: str = "0001",
             serial: str = "", manufacturer: str = "QEMU", product_name: str = "QEMU USB Keyboard",
             interfaces: tuple[str, ...] = ("030101",), with_property: bool = True,
             device_class: str = "00", attributes: Mapping[str, str] | None = None,
             properties: Mapping[str, str] | None = None) -> str:
        """Add a USB device at ``port`` (emits ``add``); returns its sysfs path.

        ``with_property=False`` leaves out ``ID_USB_INTERFACES`` so only the
        interface children tell the classes (they are added after the device,
        as the kernel does). ``attributes`` and ``properties`` replace or add
        sysfs attributes and udev properties as the ``add`` carries them (a
        device reporting garbage).
        """
        bus = int(port.split("-", 1)[0])
        self._hub(bus)
        parent = self.paths[f"usb{bus}"] if "." not in port else self.paths[port.rsplit(".", 1)[0]]
        attrs = ["idVendor", vendor, "idProduct", product, "busnum", str(bus),
                 "devnum", str(devnum), "bDeviceClass", device_class]
        for name, value in (("serial", serial), ("manufacturer", manufacturer),
                            ("product", product_name)):
            if value:
                attrs += [name, value]
        props = ["DEVTYPE", "usb_device", "BUSNUM", f"{bus:03d}", "DEVNUM", f"{devnum:03d}",
                 "ID_VENDOR_ID", vendor, "ID_MODEL_ID", product,
                 "PRODUCT", f"{int(vendor, 16):x}/{int(product, 16):x}/0"]
        if with_property and interfaces:
            props += ["ID_USB_INTERFACES", ":" + ":".join(interfaces) + ":"]
        attrs = _replaced(attrs, attributes or {})
        props = _replaced(props, properties or {})
        path = self.tb.add_device("usb", port, parent, attrs, props)
        self.paths[port] = path
        for n, triple in enumerate(interfaces):
            name = f"{port}:1.{n}"
            self.paths[name] = self.tb.add_device(
                "usb", name, path,
                ["bInterfaceClass", triple[0:2], "bInterfaceSubClass", triple[2:4],
                 "bInterfaceProtocol", triple[4:6]], ["DEVTYPE", "usb_interface"])
        return path

    def add_keyboard_input(self, port: str, number: int, name: str = "QEMU USB Keyboard") -> str:
        """The input device usbhid makes for the keyboard at ``port`` (on its first
        interface), with the capabilities by which udev calls it a keyboard."""
        interface = self.paths[f"{port}:1.0"]
        path = self.tb.add_device(
            "input", f"input{number}", interface,
            ["name", name + "\n", "capabilities/ev", "120013\n",
             "capabilities/key", "1000000000007 ff9f207ac14057ff febeffdfffefffff "
             "fffffffffffffffe\n"], [])
        self.paths[f"input{number}"] = path
        return path

    def bind(self, interface: str, driver: str) -> None:
        """Bind ``driver`` to an interface (``1-2:1.0``), as the kernel shows it: the
        interface's ``driver`` link to /sys/bus/usb/drivers/DRIVER, then ``bind``."""
        path = self.paths[interface]
        root = self.tb.get_root_dir()
        drivers = os.path.join(root, "sys", "bus", "usb", "drivers")
        os.makedirs(os.path.join(drivers, driver), exist_ok=True)
        link = os.path.join(root, path.lstrip("/"), "driver")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.relpath(os.path.join(drivers, driver), os.path.dirname(link)), link)
        self.tb.set_property(path, "DRIVER", driver)
        self.tb.uevent(path, "bind")

    def unplug(self, port: str) -> None:
        """Send ``remove`` (umockdev's remove_device sends none) and remove.

        Interfaces first, one by one, as the kernel does: removing only the
        parent leaves their /sys/bus symlinks behind and a replug then fails.
        """
        path = self.paths.pop(port)
        below = [n for n in self.paths if n.startswith(f"{port}:") or
                 (n.startswith("input") and self.paths[n].startswith(path + "/"))]
        for name in sorted(below, key=lambda n: not n.startswith("input")):
            child = self.paths.pop(name)
            self.tb.uevent(child, "remove")
            self.tb.remove_device(child)
        self.tb.uevent(path, "remove")
        self.tb.remove_device(path)


def _replaced(pairs: list[str], values: Mapping[str, str]) -> list[str]:
    """A flat [name, value, …] list with ``values`` put in (replacing, then added)."""
    merged = dict(zip(pairs[::2], pairs[1::2], strict=True)) | dict(values)
    return [x for item in merged.items() for x in item]
