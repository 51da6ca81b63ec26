"""The udev adapter over a umockdev testbed: real libudev and pyudev, real uevents."""

from __future__ import annotations

import asyncio

import pytest
import testbed

from phyllod.model import Subsystem
from phyllod.udev_source import DeviceGone, DeviceSeen, UdevEvent, UdevWatcher, present_devices

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
        # Its interface's add completes the identity (a change for the device).
        event = await next_event(queue)
        assert isinstance(event, DeviceSeen) and event.device.id == "usb:1-2"
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
