"""The udev adapter over a umockdev testbed: real libudev and pyudev, real uevents."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import testbed

from phyllod.core import kernel_values as kv
from phyllod.core.model import Device, Subsystem
from phyllod.host import udev_devices, udev_source
from phyllod.host.udev_source import DeviceGone, DeviceSeen, UdevEvent, UdevWatcher, present_devices

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(testbed.available()), reason=testbed.available())]


async def next_event(queue: asyncio.Queue[UdevEvent], timeout: float = 5.0) -> UdevEvent:
    return await asyncio.wait_for(queue.get(), timeout)


def test_identity_from_udev():
    tb = testbed.UsbTestbed()
    tb.plug("1-2", devnum=7, vendor="1050", product="0407", serial="12345678",
            manufacturer="Yubico", product_name="YubiKey OTP+FIDO+CCID",
            interfaces=("030101", "0b0000"))
    tb.plug("1-2.4", devnum=8, interfaces=("e00101",), with_property=False)
    devices = {d.id: d for d in present_devices()}
    assert set(devices) == {"usb:1-2", "usb:1-2.4"}, "root hubs are not devices"
    key = devices["usb:1-2"]
    assert key.subsystem is Subsystem.USB
    assert (key.port, key.busnum, key.devnum) == ("1-2", 1, 7)
    assert (key.vendor, key.product, key.serial) == ("1050", "0407", "12345678")
    assert (key.manufacturer, key.product_name) == ("Yubico", "YubiKey OTP+FIDO+CCID")
    assert key.interface_classes == ("030101", "0b0000")
    # Without ID_USB_INTERFACES the interface children are read.
    assert devices["usb:1-2.4"].interface_classes == ("e00101",)


def test_device_strings_are_kept_harmless():
    tb = testbed.UsbTestbed()
    tb.plug("1-3", devnum=3, serial="a\nb\x1b[31m", product_name="<hostdev/>&'\"")
    (d,) = present_devices()
    assert d.serial == "a\ufffdb\ufffd[31m"
    assert d.product_name == "<hostdev/>&'\""  # kept verbatim; never pasted into XML


async def test_coldplug_then_hotplug_unplug_replug():
    tb = testbed.UsbTestbed()
    tb.plug("1-1", devnum=2)
    queue: asyncio.Queue[UdevEvent] = asyncio.Queue()
    watcher = UdevWatcher(queue.put_nowait)
    present = watcher.start(asyncio.get_running_loop())
    try:
        assert [d.id for d in present] == ["usb:1-1"]
        tb.plug("1-2", devnum=3)
        event = await next_event(queue)
        assert isinstance(event, DeviceSeen) and event.action == "add"
        assert (event.device.id, event.device.devnum) == ("usb:1-2", 3)
        # Its add named its interfaces (ID_USB_INTERFACES): their own adds are dropped.
        tb.unplug("1-2")
        gone = [await next_event(queue) for _ in range(1)]
        assert gone == [DeviceGone("usb:1-2")]
        tb.plug("1-2", devnum=4, interfaces=())
        event = await next_event(queue)
        assert isinstance(event, DeviceSeen) and event.device.devnum == 4
        assert queue.empty()
    finally:
        watcher.stop()


async def test_interfaces_arriving_after_the_device_complete_its_identity():
    tb = testbed.UsbTestbed()
    queue: asyncio.Queue[UdevEvent] = asyncio.Queue()
    watcher = UdevWatcher(queue.put_nowait)
    watcher.start(asyncio.get_running_loop())
    try:
        tb.plug("1-4", devnum=5, interfaces=("e00101",), with_property=False)
        first = await next_event(queue)
        second = await next_event(queue)
        assert isinstance(first, DeviceSeen) and isinstance(second, DeviceSeen)
        assert second.device.interface_classes == ("e00101",)
    finally:
        watcher.stop()


async def test_an_interface_add_is_dropped_only_when_the_device_named_its_interfaces():
    """One event per plug when udev's usb_id named the interfaces; the same path
    re-plugged without the property has its interfaces read again (the remove
    forgot what the first plug told)."""
    tb = testbed.UsbTestbed()
    queue: asyncio.Queue[UdevEvent] = asyncio.Queue()
    watcher = UdevWatcher(queue.put_nowait)
    watcher.start(asyncio.get_running_loop())
    try:
        tb.plug("1-4", devnum=5, interfaces=("030101", "030102"))
        first = await next_event(queue)
        assert isinstance(first, DeviceSeen) and first.device.interface_classes == (
            "030101", "030102")
        tb.unplug("1-4")
        assert await next_event(queue) == DeviceGone("usb:1-4"), "both interface adds dropped"
        tb.plug("1-4", devnum=6, interfaces=("e00101",), with_property=False)
        device, interface = await next_event(queue), await next_event(queue)
        assert isinstance(device, DeviceSeen) and device.action == "add"
        assert isinstance(interface, DeviceSeen) and interface.action == "change"
        assert interface.device.interface_classes == ("e00101",)
        assert queue.empty()
    finally:
        watcher.stop()


async def test_a_host_driver_binding_an_interface_is_reported_and_number_0_is_skipped():
    """A bind of a host driver (usbhid) is what a guest losing its device looks like
    from the host; during a port reset the kernel reports device number 0."""
    tb = testbed.UsbTestbed()
    tb.plug("1-2", devnum=4)
    queue: asyncio.Queue[UdevEvent] = asyncio.Queue()
    watcher = UdevWatcher(queue.put_nowait)
    watcher.start(asyncio.get_running_loop())
    try:
        interface = tb.paths["1-2:1.0"]
        tb.tb.set_property(interface, "DRIVER", "usbhid")
        tb.tb.uevent(interface, "bind")
        event = await next_event(queue)
        assert isinstance(event, DeviceSeen) and event.device.id == "usb:1-2"
        assert event.host_driver == "usbhid"
        tb.tb.set_property(interface, "DRIVER", "usbfs")
        tb.tb.uevent(interface, "bind")
        event = await next_event(queue)
        assert isinstance(event, DeviceSeen) and event.host_driver == "", "usbfs is a guest's"

        device = tb.paths["1-2"]
        tb.tb.set_attribute(device, "devnum", "0")
        tb.tb.set_property(device, "DEVNUM", "000")
        tb.tb.uevent(device, "change")
        tb.tb.set_attribute(device, "devnum", "4")
        tb.tb.set_property(device, "DEVNUM", "004")
        tb.tb.uevent(device, "change")
        event = await next_event(queue)
        assert isinstance(event, DeviceSeen) and event.device.devnum == 4
        assert queue.empty(), "the change with device number 0 was skipped"
    finally:
        watcher.stop()


# Every value the adapter reads, out of the shape the kernel writes. A bad identity
# field (port path, bus/device number, ids) leaves the device out, said once; a bad
# optional one is dropped to its empty default, said once; text is cleaned.

def usb_devices() -> list[Device]:
    """The USB devices present (a failed test's testbed may linger with its PCI ones)."""
    return [d for d in present_devices() if d.subsystem is Subsystem.USB]


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """The adapter's lines, with a fresh memory of what it already said."""
    monkeypatch.setattr(udev_devices, "_reported", kv.ReportedOnce())
    caplog.set_level(logging.WARNING, logger="phyllod.host.udev_source")

    def lines(port: str = "") -> list[str]:
        return [r.getMessage() for r in caplog.records if port in r.getMessage()]
    return lines


SKIPPED = [
    # (what, attributes, properties)
    ("devnum 2**32", {"devnum": "4294967296"}, {"DEVNUM": "4294967296"}),
    ("devnum 128", {"devnum": "128"}, {"DEVNUM": "128"}),
    ("devnum -1", {"devnum": "-1"}, {}),
    ("devnum garbage", {"devnum": "x7"}, {"DEVNUM": "x7"}),
    ("devnum 64 KiB", {"devnum": "7" * 65536}, {}),
    ("devnum Arabic-Indic", {"devnum": "\u0667"}, {"DEVNUM": "\u0667"}),
    ("busnum -1", {"busnum": "-1"}, {}),
    ("busnum 20 digits", {"busnum": "9" * 20}, {"BUSNUM": "9" * 20}),
    ("busnum 64", {"busnum": "64"}, {}),
    ("busnum not its port's", {"busnum": "2"}, {"BUSNUM": "002"}),
    ("vendor zzzz", {"idVendor": "zzzz"}, {"ID_VENDOR_ID": "zzzz"}),
    ("vendor 5 digits", {"idVendor": "10501"}, {}),
    ("product with a control", {"idProduct": "04\x1b7"}, {}),
]


@pytest.mark.parametrize(("attributes", "properties"), [(a, p) for _, a, p in SKIPPED],
                         ids=[w for w, _, _ in SKIPPED])
def test_a_device_with_a_bad_identity_is_skipped_and_said_once(told, attributes, properties):
    tb = testbed.UsbTestbed()
    tb.plug("1-2", devnum=2)
    tb.plug("1-3", devnum=3, attributes=attributes, properties=properties)
    assert [d.id for d in usb_devices()] == ["usb:1-2"]
    usb_devices()
    assert len(told("1-3")) == 1, told()
    line = told("1-3")[0]
    assert line.startswith("ignoring the device at /sys/devices/usb1/1-3: its ")
    assert len(line) < 300 and line.isprintable(), line


@pytest.mark.parametrize("name", ["1-02", "1-0", "1-256", "1-1.2.3.4.5.6.7", "1-2..3", "1-x",
                                  "1-\u0662", "1-2\u202e"])
def test_a_device_whose_name_is_no_port_path_is_skipped(told, name):
    tb = testbed.UsbTestbed()
    tb.plug("1-2", devnum=2)
    tb.tb.add_device("usb", name, tb.paths["usb1"],
                     ["idVendor", "0627", "idProduct", "0001", "busnum", "1", "devnum", "3"],
                     ["DEVTYPE", "usb_device", "BUSNUM", "001", "DEVNUM", "003"])
    assert [d.id for d in usb_devices()] == ["usb:1-2"]
    assert len(told("port path")) == 1, told()
    assert "\u202e" not in told()[0]


def test_a_device_number_0_at_coldplug_is_a_reset_not_a_complaint(told):
    tb = testbed.UsbTestbed()
    tb.plug("1-3", devnum=3, attributes={"devnum": "0"}, properties={"DEVNUM": "000"})
    assert usb_devices() == []
    assert told() == []


DROPPED = [
    # (what, attributes, properties, field, kept)
    ("class zz", {"bDeviceClass": "zz"}, {}, "device_class", ""),
    ("class 3 digits", {"bDeviceClass": "009"}, {}, "device_class", ""),
    ("serial from the property, cleaned", {}, {"ID_SERIAL_SHORT": "ab\u202ecd\u2066"},
     "serial", "ab\ufffdcd\ufffd"),
    ("a 64 KiB manufacturer", {"manufacturer": "M" * 65536}, {}, "manufacturer", "M" * 256),
    ("a driver name with an escape", {}, {}, "driver", "usb\ufffd[2J\ufffd"),
    ("a 200-character driver name", {}, {}, "driver", "d" * kv.MAX_DRIVER_NAME),
]
#: The driver links of those devices (libudev reads the name from the link).
DRIVER_LINKS = {"usb\ufffd[2J\ufffd": "usb\x1b[2J\u202e", "d" * kv.MAX_DRIVER_NAME: "d" * 200}


@pytest.mark.parametrize(("attributes", "properties", "field", "kept"),
                         [(a, p, f, k) for _, a, p, f, k in DROPPED],
                         ids=[w for w, *_ in DROPPED])
def test_a_bad_optional_field_is_dropped_or_cleaned(told, attributes, properties, field, kept):
    tb = testbed.UsbTestbed()
    path = tb.plug("1-3", devnum=3, attributes=attributes, properties=properties)
    if field == "driver":
        drivers = Path(tb.tb.get_root_dir(), "sys/bus/usb/drivers", DRIVER_LINKS[kept])
        drivers.mkdir(parents=True)
        Path(tb.tb.get_root_dir(), path.lstrip("/"), "driver").symlink_to(drivers)
    (d,) = usb_devices()
    assert getattr(d, field) == kept
    assert (d.busnum, d.devnum, d.vendor) == (1, 3, "0627")
    if field == "device_class":
        assert len(told("bDeviceClass")) == 1, told()


def test_interface_classes_are_bounded():
    tb = testbed.UsbTestbed()
    many = tuple(f"ff{n:02x}00" for n in range(200))
    tb.plug("1-3", devnum=3, interfaces=(), properties={
        "ID_USB_INTERFACES": ":" + ":".join(many) + ":"})
    (d,) = usb_devices()
    assert d.interface_classes == many[:kv.USB_MAX_INTERFACES]


async def test_hotplug_of_bad_devices_sends_no_event_and_good_ones_still_arrive(told):
    tb = testbed.UsbTestbed()
    queue: asyncio.Queue[UdevEvent] = asyncio.Queue()
    watcher = UdevWatcher(queue.put_nowait)
    watcher.start(asyncio.get_running_loop())
    try:
        tb.plug("1-3", devnum=3, interfaces=("030101",),
                attributes={"devnum": "4294967296"}, properties={"DEVNUM": "4294967296"})
        tb.plug("1-4", devnum=4, interfaces=(), attributes={"busnum": "-1"})
        tb.plug("1-5", devnum=5, interfaces=())
        event = await next_event(queue)
        assert isinstance(event, DeviceSeen) and event.device.id == "usb:1-5", event
        # The bad device's interface (its change, its bind) is skipped with it.
        tb.tb.set_property(tb.paths["1-3:1.0"], "DRIVER", "usbhid")
        tb.tb.uevent(tb.paths["1-3:1.0"], "bind")
        tb.tb.uevent(tb.paths["1-5"], "change")
        event = await next_event(queue)
        assert isinstance(event, DeviceSeen) and event.device.id == "usb:1-5", event
        tb.unplug("1-5")
        assert await next_event(queue) == DeviceGone("usb:1-5")
        assert queue.empty()
    finally:
        watcher.stop()
    assert len(told("1-3")) == 1 and len(told("1-4")) == 1, told()


async def test_a_remove_of_no_kernel_name_is_no_event():
    tb = testbed.UsbTestbed()
    tb.plug("1-2", devnum=2)
    path = tb.tb.add_device("usb", "1-02", tb.paths["usb1"],
                            ["idVendor", "0627", "idProduct", "0001", "busnum", "1",
                             "devnum", "3"], ["DEVTYPE", "usb_device"])
    queue: asyncio.Queue[UdevEvent] = asyncio.Queue()
    watcher = UdevWatcher(queue.put_nowait)
    watcher.start(asyncio.get_running_loop())
    try:
        tb.tb.uevent(path, "remove")
        tb.unplug("1-2")
        assert await next_event(queue) == DeviceGone("usb:1-2")
        assert queue.empty()
    finally:
        watcher.stop()


#: A keyboard's descriptors, built as a device would send them: the device, one
#: configuration, a boot keyboard interface (030101) and a HID one (030000).
KEYBOARD_DESCRIPTORS = bytes.fromhex(
    "12010002000000082706010000010102030109023b00020100a0320904000001030101000921110100012241"
    "0007058103080007090401000103000000092111010001224b000705820308000a")


async def test_the_kernel_bind_of_a_device_is_a_plug_taken_once_with_its_descriptors():
    """The kernel's uevents come too: a device's ``bind`` (its probe is over) is the
    plug, with the interface classes read from its descriptors as udev's usb_id
    would; umockdev hands both monitors every event, so each of the kernel's
    copies has udev's twin, and each pair is taken once."""
    tb = testbed.UsbTestbed()
    queue: asyncio.Queue[UdevEvent] = asyncio.Queue()
    watcher = UdevWatcher(queue.put_nowait)
    watcher.start(asyncio.get_running_loop())
    try:
        path = tb.plug("1-3", devnum=9, interfaces=("030101", "030000"), with_property=False)
        tb.tb.set_attribute_binary(path, "descriptors", KEYBOARD_DESCRIPTORS)
        added = await next_event(queue)
        assert isinstance(added, DeviceSeen) and added.action == "add"
        assert added.device.interface_classes == ("030101", "030000")
        tb.tb.uevent(path, "bind")
        bound = await next_event(queue)
        assert isinstance(bound, DeviceSeen) and bound.action == "bind"
        assert bound.device.interface_classes == ("030101", "030000")
        # umockdev hands both copies over at once: which one the loop drains first
        # is the order epoll reports them in (in a real host the kernel's comes
        # first, by udev's rules' time); whichever it is, it is the one taken.
        assert bound.source in ("kernel", "udev")
        await asyncio.sleep(0.3)
        assert queue.empty(), "the second copy of the bind, and the interfaces' adds, dropped"
        tb.unplug("1-3")
        assert await next_event(queue) == DeviceGone("usb:1-3")
        await asyncio.sleep(0.3)
        assert queue.empty(), "the second copy of the remove dropped"
    finally:
        watcher.stop()


async def test_without_the_kernel_uevents_udev_alone_serves(monkeypatch, caplog):
    real = udev_source.pyudev.Monitor.from_netlink

    def refuse_kernel(context, source="udev"):
        if source == "kernel":
            raise OSError(13, "Permission denied")
        return real(context, source=source)
    monkeypatch.setattr(udev_source.pyudev.Monitor, "from_netlink", refuse_kernel)
    tb = testbed.UsbTestbed()
    queue: asyncio.Queue[UdevEvent] = asyncio.Queue()
    watcher = UdevWatcher(queue.put_nowait)
    watcher.start(asyncio.get_running_loop())
    try:
        assert "cannot listen to the kernel's uevents" in caplog.text
        path = tb.plug("1-3", devnum=9)
        assert isinstance(await next_event(queue), DeviceSeen)
        tb.tb.uevent(path, "bind")
        bound = await next_event(queue)
        assert isinstance(bound, DeviceSeen) and bound.action == "bind"
        tb.unplug("1-3")
        assert await next_event(queue) == DeviceGone("usb:1-3")
        await asyncio.sleep(0.3)
        assert queue.empty()
    finally:
        watcher.stop()
