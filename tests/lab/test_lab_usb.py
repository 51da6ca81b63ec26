"""USB passthrough end to end: QMP plugs a device into L1, phyllod in L1 moves it to L2.

Every test asserts from both sides: phyllod's own journal in L1, and L2's
QEMU (``info usb`` through L2's monitor, the hostdevs of L2's live XML) or
L1's kernel (which driver holds the device).
"""

from __future__ import annotations

import re
import time

import pytest
from lab_phyllod import KBD_TO_L2, L2, LabPhyllod, keyboard_alias
from policies import rule

pytestmark = pytest.mark.lab



def test_coldplug_lands_in_the_guest(lab_phyllod: LabPhyllod):
    lab_phyllod.plug("kbd1", port=1)
    lab_phyllod.start(KBD_TO_L2)
    alias = keyboard_alias(lab_phyllod.lab, port=1)
    lab_phyllod.wait_in_l2(alias)
    assert lab_phyllod.l2_hostdev_aliases() == [alias]
    lab_phyllod.wait_journal(rf"attached usb:1-1 to {L2}")


def test_hotplug_unplug_replug(lab_phyllod: LabPhyllod):
    first = lab_phyllod.keyboard_in_l2(port=2)
    lab_phyllod.unplug("kbd1")
    lab_phyllod.wait_not_in_l2(first)
    assert lab_phyllod.l2_hostdev_aliases() == [], "no stale hostdev left in L2"
    lab_phyllod.plug("kbd1", port=2)
    second = keyboard_alias(lab_phyllod.lab, port=2)
    assert second != first, "a replug is a new enumeration"
    lab_phyllod.wait_in_l2(second)
    assert lab_phyllod.l2_hostdev_aliases() == [second]


def test_two_identical_devices_only_the_ruled_port_moves(lab_phyllod: LabPhyllod):
    lab_phyllod.start(f"""\
[[rule]]
name = "the keyboard in port 1-3"
match = {{ vendor = "0627", port = "1-3" }}
guest = "{L2}"
""")
    lab_phyllod.plug("left", port=2)
    lab_phyllod.plug("right", port=3)
    right = keyboard_alias(lab_phyllod.lab, port=3)
    lab_phyllod.wait_in_l2(right)
    lab_phyllod.wait_journal(r"usb:1-2 .*: host: no rule matches")
    assert lab_phyllod.l2_hostdev_aliases() == [right]
    assert lab_phyllod.host_driver("1-2:1.0") == "usbhid"


def test_guest_stop_returns_the_device_and_start_brings_it_back(lab_phyllod: LabPhyllod):
    """Issue 16: QEMU letting go of the keyboard as L2 stops, and L1's usbhid binding
    it, is no reset on the host: no detach is sent to the stopping L2, and its next
    run gets the keyboard with one attach (no detach and attach again: a blink)."""
    p = lab_phyllod
    alias = p.keyboard_in_l2()
    p.wait_journal(rf"attached usb:1-1 to {L2}")
    p.mark_journal()
    p.virsh(f"destroy {L2}")
    p.wait_journal(rf"usb:1-1 .*: pending guest={L2}: guest '{L2}' is not running")
    p.wait_host_driver("1-1:1.0", "usbhid")
    p.virsh(f"start {L2}")
    p.wait_in_l2(alias)
    p.wait_journal(rf"attached usb:1-1 to {L2}")
    time.sleep(4)  # past the 2 s a host driver's bind is watched: nothing may follow
    journal = p.journal()
    assert len(re.findall(r"attaching usb:1-1 ", journal)) == 1, journal
    assert "detaching" not in journal and "detach " not in journal, journal
    assert "domain is not running" not in journal and "took it back" not in journal, journal
    assert p.l2_hostdev_aliases() == [alias]


def test_sigkill_and_restart_adopts_without_attaching_twice(lab_phyllod: LabPhyllod):
    alias = lab_phyllod.keyboard_in_l2()
    lab_phyllod.kill()
    lab_phyllod.start(KBD_TO_L2)
    lab_phyllod.wait_journal(rf"usb:1-1 .*: attached guest={L2}: attached to '{L2}' by rule")
    assert lab_phyllod.l2_hostdev_aliases() == [alias]
    assert "attaching usb:1-1" not in lab_phyllod.journal(), "attached twice"


def test_deny_keeps_the_device_on_the_host(lab_phyllod: LabPhyllod):
    lab_phyllod.start(rule("no keyboards in guests", 'vendor = "0627"', action="deny") + "\n"
                      + KBD_TO_L2)
    lab_phyllod.plug("kbd1", port=1)
    lab_phyllod.wait_journal(r"usb:1-1 .*: denied: denied by rule 'no keyboards in guests'")
    lab_phyllod.wait_host_driver("1-1:1.0", "usbhid")
    assert lab_phyllod.l2_hostdev_aliases() == []
