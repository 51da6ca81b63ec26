"""Ask mode in the lab: a device plugged into L1 under an ``ask`` rule waits for a
person's answer, lands in L2 once answered, and stays on L1 when nobody answers.
"""

from __future__ import annotations

import json

import pytest
from lab_phyllod import L2, LabPhyllod, keyboard_alias, wait_until

pytestmark = pytest.mark.lab

ASK_KBD = f"""\
[settings]
ask_timeout = {{timeout}}

[[rule]]
name = "keyboards: ask"
match = {{{{ vendor = "0627", product = "0001" }}}}
action = "ask"
guest = ["{L2}"]
"""


def _requests(lab_phyllod: LabPhyllod) -> list[dict]:
    rc, out, err = lab_phyllod.ctl("--json requests")
    assert rc == 0, err
    return json.loads(out)


def test_answered_from_phyllodctl_lands_in_l2(lab_phyllod: LabPhyllod):
    lab_phyllod.start(ASK_KBD.format(timeout=120))
    lab_phyllod.plug("kbd1", port=1)
    (request,) = wait_until("a request in L1", lambda: _requests(lab_phyllod))
    assert request["DeviceId"] == "usb:1-1" and request["Candidates"] == [L2]
    alias = keyboard_alias(lab_phyllod.lab, port=1)
    # Asked, not moved: the device is still L1's keyboard.
    lab_phyllod.wait_host_driver("1-1:1.0", "usbhid")
    assert lab_phyllod.l2_hostdev_aliases() == []
    rc, _, err = lab_phyllod.ctl(f"answer {request['Id']} {L2}")
    assert rc == 0, err
    lab_phyllod.wait_in_l2(alias)
    assert lab_phyllod.l2_hostdev_aliases() == [alias]
    assert _requests(lab_phyllod) == []
    lab_phyllod.wait_journal(rf"request {request['Id']} answered for usb:1-1 .*: to '{L2}'")
    lab_phyllod.wait_journal(rf"attached usb:1-1 to {L2}")


def test_no_answer_before_the_deadline_stays_on_the_host(lab_phyllod: LabPhyllod):
    lab_phyllod.start(ASK_KBD.format(timeout=3))
    lab_phyllod.plug("kbd1", port=2)
    # The journal, not the bus: under TCG on a loaded machine one phyllodctl call in
    # L1 can take longer than the 3 s the request is open (its imports alone took
    # 3.9 s with two other labs running), so polling over the bus may never see it.
    lab_phyllod.wait_journal(rf"request \d+: where does usb:1-2 .*go\? \({L2} or the host; 3s")
    lab_phyllod.wait_journal(r"request \d+ for usb:1-2: no answer before the deadline")
    assert _requests(lab_phyllod) == []
    lab_phyllod.wait_host_driver("1-2:1.0", "usbhid")
    assert lab_phyllod.l2_hostdev_aliases() == []
    rc, out, _ = lab_phyllod.ctl("explain usb:1-2")
    assert rc == 0 and "no answer before the deadline, stays on the host" in out


#: A desktop in L1 for the applet: Xvfb, a session bus, dunst as the
#: notification server. dunst's context menu runs DMENU, which picks the
#: action whose label is in DESK/pick: the action is invoked through dunst's
#: own code path (ActionInvoked on the session bus), as a click would. Not
#: under /run: it is mounted noexec in L1 and dunst could not spawn the script.
DESK = "/var/lib/lab-desk"
SESSION = f"unix:path={DESK}/bus"
DMENU = f"""#!/bin/sh
cat > {DESK}/menu-input.tmp
mv {DESK}/menu-input.tmp {DESK}/menu-input
grep -F -- "$(cat {DESK}/pick)" {DESK}/menu-input | head -n 1
"""
DUNSTRC = f"""[global]
    dmenu = {DESK}/dmenu
[urgency_normal]
    timeout = 0
[urgency_critical]
    timeout = 0
"""
DESKTOP_UNITS = ("lab-xvfb", "lab-session-bus", "lab-dunst", "lab-applet")


def _start_desktop(lab_phyllod: LabPhyllod) -> None:
    lab = lab_phyllod.lab
    lab_phyllod.sh(f"mkdir -p {DESK}")
    lab.write_file(f"{DESK}/dmenu", DMENU)
    lab.write_file(f"{DESK}/dunstrc", DUNSTRC)
    lab_phyllod.sh(f"chmod +x {DESK}/dmenu")
    env = f"-E DISPLAY=:7 -E DBUS_SESSION_BUS_ADDRESS={SESSION}"
    lab_phyllod.sh("systemd-run --unit=lab-xvfb Xvfb :7 -screen 0 1024x768x24 -nolisten tcp")
    lab_phyllod.sh(f"systemd-run --unit=lab-session-bus dbus-daemon --session --nofork "
                   f"--address={SESSION}")
    wait_until("Xvfb and the session bus", lambda: lab.run(
        f"test -S /tmp/.X11-unix/X7 && test -S {DESK}/bus")[0] == 0)
    lab_phyllod.sh(f"systemd-run --unit=lab-dunst {env} dunst -config {DESK}/dunstrc")
    wait_until("dunst on the session bus", lambda: lab.run(
        f"DBUS_SESSION_BUS_ADDRESS={SESSION} dunstctl is-paused")[0] == 0)
    # The applet as the packaged autostart file starts it, on L1's real system bus.
    lab_phyllod.sh(f"systemd-run --unit=lab-applet {env} phyllod-applet")


def _stop_desktop(lab_phyllod: LabPhyllod) -> None:
    lab_phyllod.lab.run(f"systemctl stop {' '.join(DESKTOP_UNITS)}; "
                        f"systemctl reset-failed {' '.join(DESKTOP_UNITS)} 2>/dev/null; "
                        f"rm -rf {DESK}")


def test_answered_from_a_notification_action_lands_in_l2(lab_phyllod: LabPhyllod):
    lab_phyllod.start(ASK_KBD.format(timeout=120))
    _start_desktop(lab_phyllod)
    try:
        lab = lab_phyllod.lab
        wait_until("the applet watching phyllod", lambda: "watching me.phyllo.Phyllod1" in
                   lab.run("journalctl -u lab-applet -o cat --no-pager")[1], timeout=60)
        lab_phyllod.plug("kbd1", port=3)
        (request,) = wait_until("a request in L1", lambda: _requests(lab_phyllod))
        alias = keyboard_alias(lab, port=3)
        count = f"DBUS_SESSION_BUS_ADDRESS={SESSION} dunstctl count displayed"
        wait_until("the applet's notification in dunst",
                   lambda: int(lab.run(count)[1].strip() or 0) >= 1, timeout=30)
        lab.write_file(f"{DESK}/pick", f"Send to {L2}")
        lab_phyllod.sh(f"DBUS_SESSION_BUS_ADDRESS={SESSION} dunstctl context")
        # dunst runs dmenu in a thread of its own, after dunstctl returned.
        offered = wait_until("dunst's context menu", lambda: lab.run(
            f"cat {DESK}/menu-input 2>/dev/null")[1], timeout=30)
        for label in (f"Send to {L2}", "Keep on the host", f"Always send to {L2}",
                      "Always keep on the host"):
            assert label in offered, offered
        lab_phyllod.wait_in_l2(alias)
        assert lab_phyllod.l2_hostdev_aliases() == [alias]
        assert _requests(lab_phyllod) == []
        lab_phyllod.wait_journal(rf"request {request['Id']} answered for usb:1-3 .*: to '{L2}'")
        assert lab.run("systemctl is-active lab-applet")[1].strip() == "active"
    finally:
        log = lab_phyllod.lab.run("journalctl -u lab-applet -u lab-dunst -o cat --no-pager")[1]
        _stop_desktop(lab_phyllod)
        print("--- applet and dunst in L1 ---\n" + log)
