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
    wait_until("a request in L1", lambda: _requests(lab_phyllod))
    lab_phyllod.wait_journal(r"request \d+ for usb:1-2: no answer before the deadline")
    assert _requests(lab_phyllod) == []
    lab_phyllod.wait_host_driver("1-2:1.0", "usbhid")
    assert lab_phyllod.l2_hostdev_aliases() == []
    rc, out, _ = lab_phyllod.ctl("explain usb:1-2")
    assert rc == 0 and "no answer before the deadline, stays on the host" in out
