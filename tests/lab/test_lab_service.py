"""phyllod under its shipped unit (systemd/phyllod.service) in L1, as systemd runs it.

Reload, status, restart after a crash, the watchdog, bus activation and the
exposure score that ``systemd-analyze security`` gives the hardened unit.
LabPhyllod.start installs phyllod's Debian package (the unit comes with it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lab_phyllod import DROPIN_DIR, L2, UNIT, LabPhyllod, wait_until
from policies import rule

from phyllod.host.systemd_glue import MessageId

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
KBD_TO_L2 = rule("keyboards to l2", 'vendor = "0627"', guest=L2)
STICKS_STAY = rule("sticks stay", 'interface_class = "08"', action="deny")
BROKEN = rule("broken", 'colour = "red"', guest="l2")
#: The highest exposure systemd-analyze may give the unit (docs/hardening.md).
MAX_EXPOSURE = 1.5


def _show(p: LabPhyllod, prop: str) -> str:
    return p.sh(f"systemctl show -P {prop} {UNIT}").strip()


def _active(p: LabPhyllod) -> bool:
    return p.lab.run(f"systemctl is-active {UNIT}")[1].strip() == "active"


def _dropin(p: LabPhyllod, name: str, text: str | None) -> None:
    """Add (or with None remove) a test drop-in for the packaged unit."""
    path = f"{DROPIN_DIR}/{name}"
    if text is None:
        p.lab.run(f"rm -f {path}; systemctl daemon-reload")
    else:
        p.sh(f"mkdir -p {DROPIN_DIR}")
        p.lab.write_file(path, text)
        p.sh("systemctl daemon-reload")


def test_reload_applies_the_policy_and_refuses_a_broken_one(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    p.start(KBD_TO_L2)
    p.wait_journal(r"policy: 1 rules from 1 files")
    pid = p.main_pid()
    try:
        p.lab.write_file("/etc/phyllod/policy.d/20-sticks.toml", STICKS_STAY)
        p.sh(f"systemctl reload {UNIT}")
        p.wait_journal(r"policy: 2 rules from 2 files")

        p.lab.write_file("/etc/phyllod/policy.d/30-broken.toml", BROKEN)
        p.sh(f"systemctl reload {UNIT}")
        p.wait_journal(r"30-broken.toml:\d+: rule 'broken': unknown match key 'colour'")
        p.wait_journal(r"policy reload refused; the previous policy stays in force")
        assert _active(p)
        assert p.main_pid() == pid, "a reload must not restart phyllod"
        assert "policy has errors" not in _show(p, "StatusText")
    finally:
        p.lab.run("rm -f /etc/phyllod/policy.d/20-sticks.toml /etc/phyllod/policy.d/30-broken.toml")


def test_status_text_is_phyllods_status(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    p.start(KBD_TO_L2)
    assert re.fullmatch(r"\d+ devices: .*\d+ host.*", _show(p, "StatusText"))
    p.plug("kbd1", port=1)
    wait_until("StatusText to count the attached keyboard",
               lambda: "1 attached" in _show(p, "StatusText"))


def test_a_crash_is_restarted_by_systemd_and_adopts(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    alias = p.keyboard_in_l2(KBD_TO_L2)
    restarts = int(_show(p, "NRestarts"))
    p.mark_journal()
    p.kill()
    wait_until("systemd to restart phyllod (Restart=on-failure)", lambda: _active(p)
               and int(_show(p, "NRestarts")) == restarts + 1, timeout=180, interval=1)
    p.wait_journal(rf"usb:1-1 .*: attached guest={L2}: attached to '{L2}' by rule")
    assert p.l2_hostdev_aliases() == [alias]
    assert "attaching usb:1-1" not in p.journal(), "attached twice"


def _sends_watchdog_pings() -> bool:
    return any("WATCHDOG=1" in f.read_text() for f in (REPO / "phyllod").rglob("*.py"))


def test_a_hung_loop_is_killed_and_restarted_by_the_watchdog(lab_phyllod: LabPhyllod):
    if not _sends_watchdog_pings():
        pytest.skip("phyllod sends no WATCHDOG=1 yet (grep -rn WATCHDOG phyllod/ finds "
                    "nothing): with WatchdogSec= set systemd would kill a healthy phyllod")
    p = lab_phyllod
    # SIGSTOP leaves the watchdog's SIGABRT pending: TimeoutAbortSec= bounds
    # the wait before systemd's SIGKILL.
    _dropin(p, "zz-watchdog.conf", "[Service]\nWatchdogSec=5s\nTimeoutAbortSec=5s\n")
    try:
        p.start(KBD_TO_L2)
        assert _show(p, "WatchdogUSec") == "5s"
        # A healthy phyllod outlives several watchdog periods.
        pid = p.main_pid()
        p.sh("sleep 12")
        assert _active(p) and p.main_pid() == pid, p.journal()
        restarts = int(_show(p, "NRestarts"))
        p.sh(f"kill -STOP {pid}")
        p.wait_journal(r"phyllod.service: Watchdog timeout", timeout=60)
        wait_until("systemd to restart phyllod after the watchdog", lambda: _active(p)
                   and p.main_pid() not in (0, pid), timeout=180, interval=1)
        assert int(_show(p, "NRestarts")) == restarts + 1
    finally:
        _dropin(p, "zz-watchdog.conf", None)


def test_a_bus_call_starts_a_stopped_phyllod(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    p.start(KBD_TO_L2)
    p.stop()
    assert not _active(p)
    # dbus-daemon's activation file says SystemdService=phyllod.service; the
    # call waits for the name, which phyllod takes once it is ready.
    p.sh("busctl --timeout=180 call me.phyllo.Phyllod1 /me/phyllo/Phyllod1 "
         "org.freedesktop.DBus.Peer Ping", timeout=200)
    assert _active(p)
    p.wait_journal(r"phyllod .* ready")
    # The package enabled the unit, which made the bus-activation alias of [Install].
    assert p.sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"
    assert p.sh("readlink /etc/systemd/system/dbus-me.phyllo.Phyllod1.service").strip() \
        .endswith(f"{UNIT}.service")


def test_the_hardened_unit_scores_as_documented(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    p.start(KBD_TO_L2)
    out = p.sh(f"systemd-analyze security --no-pager {UNIT}")
    match = re.search(r"Overall exposure level for phyllod\.service: (\d+\.\d+)", out)
    assert match, out
    score = float(match.group(1))
    print(f"systemd-analyze security phyllod in L1: {score}")  # pytest -s shows it
    assert score <= MAX_EXPOSURE, out
    # The sandbox really is there, seen from phyllod's side.
    pid = p.main_pid()
    status = p.sh(f"grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/{pid}/status")
    assert re.search(r"CapBnd:\s+0+$", status, re.M), status
    assert re.search(r"NoNewPrivs:\s+1$", status, re.M), status
    assert re.search(r"Seccomp:\s+2$", status, re.M), status


def test_journal_answers_what_happened_to_my_guest(lab_phyllod: LabPhyllod):
    """Structured fields and MESSAGE_IDs, read back with journalctl as a person would."""
    p = lab_phyllod
    p.keyboard_in_l2(KBD_TO_L2)
    attached = p.sh(f"journalctl -u {UNIT} PHYLLOD_GUEST={L2} MESSAGE_ID={MessageId.ATTACHED} "
                    "-o cat --no-pager")
    assert re.search(rf"attached usb:1-1 to {L2} in \d+ ms", attached), attached
    fields = p.sh(f"journalctl -u {UNIT} MESSAGE_ID={MessageId.DECISION} PHYLLOD_DEVICE=usb:1-1 "
                  "-o export --no-pager")
    assert f"PHYLLOD_GUEST={L2}" in fields and "PHYLLOD_RULE=keyboards to l2" in fields
    assert "PHYLLOD_STATE=attached" in fields
