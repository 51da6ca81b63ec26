"""The D-Bus API end to end: phyllodctl on L1's real system bus moves a device into L2.

phyllod runs as a systemd service in L1 on the system bus with the shipped
bus policy and polkit actions; L1's real polkitd answers for every change.
"""

from __future__ import annotations

import json

import pytest
from lab_phyllod import L2, LabPhyllod, keyboard_alias, wait_until

pytestmark = pytest.mark.lab

#: A policy that says nothing about keyboards: only a person moves them.
NO_RULE = """\
[[rule]]
name = "no sticks in guests"
match = { interface_class = "08" }
action = "deny"
"""
MONITOR = "phyllodctl-monitor"


def _show(lab_phyllod: LabPhyllod, device: str) -> dict:
    rc, out, err = lab_phyllod.ctl(f"--json show {device}")
    assert rc == 0, err
    return json.loads(out)


def test_phyllodctl_attach_detach_and_monitor(lab_phyllod: LabPhyllod):
    lab = lab_phyllod.lab
    lab_phyllod.start(NO_RULE)
    out = lab_phyllod.sh("busctl introspect me.phyllo.Phyllod1 /me/phyllo/Phyllod1")
    assert "me.phyllo.Phyllod1.Manager" in out and "org.freedesktop.DBus.ObjectManager" in out
    lab_phyllod.sh(f"systemctl reset-failed {MONITOR} 2>/dev/null; "
                   f"systemd-run --unit={MONITOR} "
                   "sh -c 'exec phyllodctl monitor > /run/monitor.log 2>&1'")
    try:
        wait_until("phyllodctl monitor to listen", lambda: "phyllod monitoring" in lab.run(
            "cat /run/monitor.log")[1], timeout=120)
        lab_phyllod.plug("kbd1", port=3)
        alias = keyboard_alias(lab, port=3)
        wait_until("usb:1-3 on the bus", lambda: lab_phyllod.ctl("show usb:1-3")[0] == 0)
        assert _show(lab_phyllod, "usb:1-3")["State"] == "host"

        rc, _, err = lab_phyllod.ctl(f"attach 0627:0001 {L2}")
        assert rc == 0, err
        lab_phyllod.wait_in_l2(alias)
        shown = _show(lab_phyllod, "usb:1-3")
        assert (shown["State"], shown["Guest"], shown["Override"]) == ("attached", L2, "attach")
        assert lab_phyllod.l2_hostdev_aliases() == [alias]

        # Not root, no session: polkit wants an admin password; refused, nothing moves.
        rc, _, err = lab.run("setpriv --reuid=65534 --regid=65534 --clear-groups "
                             "phyllodctl detach usb:1-3")
        assert rc == 4, err
        assert lab_phyllod.l2_hostdev_aliases() == [alias]

        # The override outlives a restart of phyllod: adopted, not attached twice.
        lab_phyllod.stop()
        lab_phyllod.start(NO_RULE)
        assert _show(lab_phyllod, "usb:1-3")["State"] == "attached"
        assert lab_phyllod.l2_hostdev_aliases() == [alias]

        rc, _, err = lab_phyllod.ctl("detach usb:1-3")
        assert rc == 0, err
        lab_phyllod.wait_not_in_l2(alias)
        lab_phyllod.wait_host_driver("1-3:1.0", "usbhid")
        assert _show(lab_phyllod, "usb:1-3")["Override"] == "host"
        lab_phyllod.unplug("kbd1")
        wait_until("usb:1-3 gone from the bus", lambda: lab_phyllod.ctl("show usb:1-3")[0] == 3)
    finally:
        lab.run(f"systemctl stop {MONITOR}")
    log = lab_phyllod.sh("cat /run/monitor.log")
    assert "+ usb:1-3 plugged 0627:0001" in log
    assert "usb:1-3 state attached" in log and f"guest={L2}" in log
    assert "usb:1-3 override=host" in log or "usb:1-3 state host" in log
    assert "- usb:1-3 gone" in log
