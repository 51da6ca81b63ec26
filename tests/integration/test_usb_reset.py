"""usb_reset.py: the node it opens, the ioctl it issues, the errors it reports.

The success path runs against a umockdev device node whose ioctls a handler
in this test answers (umockdev-wrapper redirects /dev/bus/usb into the
testbed): it sees the exact request number the kernel would. The failure
paths need nothing mocked: a regular file refuses the ioctl (ENOTTY) as any
non-usbfs file does, and a missing node cannot be opened.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testbed
from gi.repository import UMockdev

from phyllod.host.usb_reset import USBDEVFS_RESET, UsbResetError, reset_usb_device, usb_device_node

NODE = "/dev/bus/usb/001/004"


def test_request_number_is_linux_usbdevfs_reset():
    # _IO('U', 20): direction 0, size 0, type 'U' (0x55) in bits 8-15, number 20.
    assert USBDEVFS_RESET == (ord("U") << 8) | 20 == 0x5514


def test_node_path_is_three_digit_bus_and_device(tmp_path):
    assert usb_device_node(1, 4) == Path("/dev/bus/usb/001/004")
    assert usb_device_node(3, 127, tmp_path) == tmp_path / "003" / "127"
    assert usb_device_node(12, 1000, tmp_path) == tmp_path / "012" / "1000"


@pytest.mark.parametrize(("busnum", "devnum"), [(0, 4), (1, 0), (-1, 2)])
def test_numbers_no_device_has_are_refused(tmp_path, busnum, devnum):
    with pytest.raises(UsbResetError, match=f"bus {busnum}, device {devnum}"):
        reset_usb_device(busnum, devnum, tmp_path)


def test_regular_file_refuses_the_ioctl(tmp_path):
    (tmp_path / "001").mkdir()
    (tmp_path / "001" / "004").write_bytes(b"")
    with pytest.raises(UsbResetError) as raised:
        reset_usb_device(1, 4, tmp_path)
    assert str(raised.value) == (f"cannot reset USB device {tmp_path}/001/004: "
                                 f"{os.strerror(errno.ENOTTY)}")
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ENOTTY


def test_missing_node(tmp_path):
    with pytest.raises(UsbResetError) as raised:
        reset_usb_device(2, 7, tmp_path)
    assert str(raised.value) == (f"cannot open USB device node {tmp_path}/002/007: "
                                 f"{os.strerror(errno.ENOENT)}")


def test_node_is_opened_for_writing(tmp_path):
    """A directory opens read-only (then refuses the ioctl) but never for writing:
    the error says "open", so the node was opened O_WRONLY, as usbfs wants."""
    (tmp_path / "001" / "004").mkdir(parents=True)
    with pytest.raises(UsbResetError) as raised:
        reset_usb_device(1, 4, tmp_path)
    assert str(raised.value) == (f"cannot open USB device node {tmp_path}/001/004: "
                                 f"{os.strerror(errno.EISDIR)}")


@dataclass
class UsbfsNode:
    """What the handler of a umockdev usbfs node saw, and how it answers a reset."""

    seen: list[int] = field(default_factory=list)
    reset_errno: int = 0  # 0: the reset succeeds


@pytest.fixture
def usbfs_node() -> Iterator[UsbfsNode]:
    """A umockdev usbfs node for bus 1, device 4, whose ioctls this test answers.

    USBDEVFS_RESET gets ``reset_errno`` (success by default), anything else
    ENOTTY, as the kernel answers an ioctl it does not know.
    """
    why = testbed.available()
    if why:
        pytest.skip(why)
    tb = testbed.new_testbed()
    tb.add_from_string(
        "P: /devices/pci0000:00/0000:00:14.0/usb1/1-2\n"
        "N: bus/usb/001/004\n"
        "E: SUBSYSTEM=usb\nE: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/004\n"
        "E: BUSNUM=001\nE: DEVNUM=004\n"
        "A: busnum=1\nA: devnum=4\nA: dev=189:3\n\n")
    node = UsbfsNode()

    def on_ioctl(_handler: UMockdev.IoctlBase, client: UMockdev.IoctlClient) -> bool:
        request = client.get_request()
        node.seen.append(request)
        failure = node.reset_errno if request == USBDEVFS_RESET else errno.ENOTTY
        client.complete(-1 if failure else 0, failure)
        return True

    handler = UMockdev.IoctlBase()
    handler.connect("handle-ioctl", on_ioctl)
    tb.attach_ioctl(NODE, handler)
    try:
        yield node
    finally:
        tb.detach_ioctl(NODE)


def test_reset_issues_usbdevfs_reset_on_the_node(usbfs_node):
    reset_usb_device(1, 4)
    assert usbfs_node.seen == [USBDEVFS_RESET]


def test_reset_the_kernel_refuses(usbfs_node):
    """The device left between lookup and reset: ENODEV, named with its node."""
    usbfs_node.reset_errno = errno.ENODEV
    with pytest.raises(UsbResetError) as raised:
        reset_usb_device(1, 4)
    assert str(raised.value) == f"cannot reset USB device {NODE}: {os.strerror(errno.ENODEV)}"
    assert usbfs_node.seen == [USBDEVFS_RESET]


def test_reset_of_another_device_does_not_touch_this_one(usbfs_node):
    with pytest.raises(UsbResetError, match="cannot open USB device node /dev/bus/usb/001/005"):
        reset_usb_device(1, 5)
    assert usbfs_node.seen == []
