"""usb_verdict as a table: every check weighs what lies below the device, hub or not.

The host loses the same whether its only keyboard is passed itself or the hub
it hangs off: both get ``host-keyboard``; a stick and the hub in front of it
both hold its mount.
"""

from __future__ import annotations

import pytest

from phyllod.core.model import Device, HostFacts, Subsystem
from phyllod.core.safety.usb import usb_verdict
from phyllod.core.safety.verdict import Risk

USB1 = "/sys/devices/pci0000:00/0000:00:14.0/usb1"
HUB = f"{USB1}/1-1"
KEYBOARD = f"{HUB}/1-1.2"
STICK = f"{HUB}/1-1.3"
OTHER = f"{USB1}/1-4"
KEYBOARD_INPUT = f"{KEYBOARD}/1-1.2:1.0/0003:046D:C31C.0001/input/input5"
PS2_INPUT = "/sys/devices/platform/i8042/serio0/input/input0"
STICK_SDA1 = f"{STICK}/1-1.3:1.0/host6/target6:0:0/6:0:0:0/block/sda/sda1"


def usb(path: str, hub: bool = False) -> Device:
    return Device(subsystem=Subsystem.USB, sys_path=path, port=path.rsplit("/", 1)[1],
                  device_class="09" if hub else "00")


ONLY_USB = {KEYBOARD_INPUT: "Logitech USB Keyboard"}
USB_AND_PS2 = {**ONLY_USB, PS2_INPUT: "AT Translated Set 2 keyboard"}
MOUNTED = {STICK_SDA1: "/media/stick (sda1)"}


@pytest.mark.parametrize(("device", "keyboards", "mounts", "allowed", "blocking", "warnings"), [
    # The keyboard itself, the host's only one: it takes the same as its hub.
    (usb(KEYBOARD), ONLY_USB, {}, frozenset(), [Risk.HOST_KEYBOARD], []),
    (usb(HUB, hub=True), ONLY_USB, {}, frozenset(), [Risk.HOST_KEYBOARD], []),
    # Accepted by name: a warning, for the device as for the hub.
    (usb(KEYBOARD), ONLY_USB, {}, frozenset({"host-keyboard"}), [], [Risk.HOST_KEYBOARD]),
    (usb(HUB, hub=True), ONLY_USB, {}, frozenset({"host-keyboard"}), [], [Risk.HOST_KEYBOARD]),
    # Another keyboard stays: nothing for either.
    (usb(KEYBOARD), USB_AND_PS2, {}, frozenset(), [], []),
    (usb(HUB, hub=True), USB_AND_PS2, {}, frozenset(), [], []),
    # A server with no keyboard at all.
    (usb(KEYBOARD), {}, {}, frozenset(), [], []),
    # A device elsewhere takes nothing.
    (usb(OTHER), ONLY_USB, MOUNTED, frozenset(), [], []),
    # The mount: the stick and the hub in front of it; never acceptable by name.
    (usb(STICK), {}, MOUNTED, frozenset(), [Risk.HOST_STORAGE], []),
    (usb(HUB, hub=True), {}, MOUNTED, frozenset({"host-keyboard"}), [Risk.HOST_STORAGE], []),
    # The hub carries both at once.
    (usb(HUB, hub=True), ONLY_USB, MOUNTED, frozenset(),
     [Risk.HOST_STORAGE, Risk.HOST_KEYBOARD], []),
])
def test_usb_verdict(device, keyboards, mounts, allowed, blocking, warnings):
    facts = HostFacts(keyboards=keyboards, block_mounts=mounts)
    verdict = usb_verdict(device, facts, allowed)
    assert [f.risk for f in verdict.blocking] == blocking
    assert [f.risk for f in verdict.warnings] == warnings


def test_the_keyboard_is_named_by_itself():
    verdict = usb_verdict(usb(KEYBOARD), HostFacts(keyboards=ONLY_USB))
    assert verdict.reason() == (
        "usb:1-1.2 carries the host's only keyboard, Logitech USB Keyboard (usb:1-1.2) "
        '(a rule may accept it with allow_risks = ["host-keyboard"])')
    hub = usb_verdict(usb(HUB, hub=True), HostFacts(keyboards=ONLY_USB))
    assert hub.reason().startswith("usb:1-1 (a hub) carries the host's only keyboard")


def test_a_sibling_port_with_a_longer_name_is_not_below():
    """1-1.20 is not behind 1-1.2: the path test is by component, not by prefix."""
    sibling = f"{HUB}/1-1.20"
    verdict = usb_verdict(usb(KEYBOARD), HostFacts(
        keyboards={f"{sibling}/1-1.20:1.0/0003:046D:C31C.0002/input/input7": "kbd"}))
    assert verdict.ok and not verdict.warnings
