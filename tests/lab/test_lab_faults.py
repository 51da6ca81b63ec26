"""SIGKILL of phyllod at each step of a real attach and detach, then a restart (L1/L2).

The daemon's fault points (phyllod/service/fault_points.py, armed by a file in
$PHYLLOD_FAULT_DIR, set by a drop-in for the packaged unit) hold phyllod at
an exact step: before the libvirt call, while it runs (the call completes,
phyllod never sees its result), and after it returned but before phyllod
took note. The test kills it there, starts it again, and checks the whole
state: the device where policy and overrides say, exactly one hostdev for
it in L2's live XML (none stale), the override file intact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from lab_phyllod import DROPIN_DIR, KBD_TO_L2, L2, LabPhyllod, keyboard_alias

pytestmark = [pytest.mark.lab, pytest.mark.reliability]

FAULTS = "/var/lib/phyllod/faults"

@pytest.fixture
def faulty(lab_phyllod: LabPhyllod) -> Iterator[LabPhyllod]:
    """phyllod with its fault points enabled (a drop-in), removed afterwards."""
    p = lab_phyllod
    p.sh(f"mkdir -p {DROPIN_DIR} {FAULTS}")
    p.lab.write_file(f"{DROPIN_DIR}/faults.conf",
                     f"[Service]\nEnvironment=PHYLLOD_FAULT_DIR={FAULTS}\n")
    p.sh("systemctl daemon-reload")
    try:
        yield p
    finally:
        p.lab.run(f"rm -rf {DROPIN_DIR}/faults.conf {FAULTS}; systemctl daemon-reload")


def _kill_at(p: LabPhyllod, point: str) -> str:
    """SIGKILL phyllod held at ``point``; returns a journal cursor from just before.

    systemd restarts it by itself (Restart=on-failure) before the test does:
    what happened after the kill is read from that cursor on.
    """
    p.wait_journal(rf"fault point {point} reached; holding", timeout=90)
    p.mark_journal()
    since = p.cursor
    p.kill()
    return since


def _overrides(p: LabPhyllod) -> list[dict]:
    rc, out, _ = p.lab.run("cat /var/lib/phyllod/overrides.json")
    return json.loads(out)["overrides"] if rc == 0 else []


@pytest.mark.parametrize("point", ["attach-before", "attach-running", "attach-returned"])
def test_sigkill_during_an_attach_then_restart(faulty: LabPhyllod, point: str, reliability):
    p = faulty
    p.start(KBD_TO_L2)
    p.sh(f"touch {FAULTS}/{point}")
    p.plug("kbd1", port=1)
    alias = keyboard_alias(p.lab, port=1)
    since = _kill_at(p, point)
    issued = point != "attach-before"
    if issued:  # the call went through although phyllod never saw it return
        p.wait_in_l2(alias)
    p.start(KBD_TO_L2)
    p.wait_in_l2(alias)
    assert p.l2_hostdev_aliases() == [alias], "exactly one hostdev, none stale"
    p.wait_journal(rf"usb:1-1 .*: attached guest={L2}: attached to '{L2}'")
    p.cursor = since
    attaches = p.journal().count("attaching usb:1-1")
    assert attaches == (0 if issued else 1), \
        "after the kill: attached once only if the killed call never reached libvirt"
    reliability.record(f"SIGKILL at {point}, restart", device_in_l2=True,
                       hostdevs_for_it=len(p.l2_hostdev_aliases()),
                       attached_again_after_restart=not issued)


@pytest.mark.parametrize("point", ["detach-before", "detach-running", "detach-returned"])
def test_sigkill_during_a_detach_then_restart(faulty: LabPhyllod, point: str, reliability):
    p = faulty
    alias = p.keyboard_in_l2()
    started = p.cursor
    p.sh(f"touch {FAULTS}/{point}")
    # A manual detach: the override is written before anything moves.
    p.lab.run("systemd-run --no-block phyllodctl detach usb:1-1")
    _kill_at(p, point)
    p.cursor = started  # the journal since the restart before the plug (start() marks anew)
    assert [o["kind"] for o in _overrides(p)] == ["host"], \
        f"the override was kept\n--- phyllod's journal ---\n{p.journal()}"
    p.start(KBD_TO_L2)
    p.wait_not_in_l2(alias)
    p.wait_host_driver("1-1:1.0", "usbhid")
    assert p.l2_hostdev_aliases() == [], "no stale hostdev"
    p.wait_journal(r"usb:1-1 .*: host: kept on the host by a manual override")
    assert [o["kind"] for o in _overrides(p)] == ["host"], "no lost override"
    reliability.record(f"SIGKILL at {point}, restart", device_on_host=True,
                       stale_hostdevs=len(p.l2_hostdev_aliases()), override_kept=True)
