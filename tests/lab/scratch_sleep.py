"""Scratch: what hangs in L1 after a real S3 (untracked; delete after)."""
from __future__ import annotations

import time

import pytest
from lab_phyllod import L2, LabPhyllod, keyboard_alias, wait_until
from test_lab_real_life import KBD_TO_L2, _count

pytestmark = pytest.mark.lab
LOG = "/tmp/sleepdiag/diag.log"


def diag(p: LabPhyllod, title: str, cmds: list[str], timeout: float = 30) -> None:
    with open(LOG, "a") as f:
        f.write(f"\n\n########## {title} ({time.strftime('%T')})\n")
        for cmd in cmds:
            f.write(f"\n===== $ {cmd}\n")
            try:
                rc, out, err = p.lab.run(cmd, timeout=timeout)
                f.write(f"{out}{err}[rc={rc}]\n")
            except Exception as e:
                f.write(f"!!! {type(e).__name__}: {e}\n")
            f.flush()


BASIC = [
    "systemctl list-jobs --no-pager",
    "systemctl status systemd-suspend.service sleep.target suspend.target phyllod "
    "--no-pager -l | cat",
    "busctl call org.freedesktop.login1 /org/freedesktop/login1 "
    "org.freedesktop.login1.Manager ListInhibitors",
    "busctl get-property org.freedesktop.login1 /org/freedesktop/login1 "
    "org.freedesktop.login1.Manager PreparingForSleep",
    "loginctl --no-pager",
    "ps -eo pid,ppid,stat,etimes,wchan:30,cmd --forest",
]


def test_scratch(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    open(LOG, "w").close()
    p.start(KBD_TO_L2)
    p.plug("kbd1", port=1)
    alias = keyboard_alias(p.lab, port=1)
    p.wait_in_l2(alias)
    p.wait_journal(r"attached usb:1-1 to l2")
    diag(p, "before suspend", BASIC[:4])
    p.sh("setpci -s 00:1f.0 40.l=0x601 44.b=0x80")
    p.sh("systemd-run --no-block systemctl suspend")
    wait_until("L1 suspended (QMP query-status)",
               lambda: p.lab.qmp("query-status")["status"] == "suspended", 60, 0.2)
    time.sleep(2)
    p.lab.qmp("system_wakeup")
    wait_until("L1 running again", lambda: p.lab.qmp("query-status")["status"] == "running")
    p.wait_journal(r"the host resumed; attaching devices again")
    wait_until("attached again after resume",
               lambda: _count(rf"attached usb:1-1 to {L2}", p.journal()) >= 2, 90, 0.5)
    p.wait_in_l2(keyboard_alias(p.lab, port=1))
    diag(p, "after resume", BASIC + ["journalctl -b --no-pager -n 250 | cat"])
    # The fixture's reset does systemctl stop phyllod: do it here, timed.
    diag(p, "stop phyllod", ["time timeout 40 systemctl stop phyllod; echo rc=$?",
                             "systemctl list-jobs --no-pager"], 60)
    diag(p, "after stop", BASIC)
    # Reinstall in the background, poll.
    p.sh("rm -f /var/lib/phyllod-lab.deb.hash")
    share = "/opt/phyllod/build/deb"
    p.sh(f"systemd-run --unit=labinstall --no-block sh -xc 'DEBIAN_FRONTEND=noninteractive "
         f"dpkg -i {share}/phyllod_*_all.deb {share}/phyllod-applet_*_all.deb; echo dpkg=$?'")
    for i in range(6):
        time.sleep(15)
        diag(p, f"install poll {i}", ["systemctl is-active labinstall",
                                      "systemctl list-jobs --no-pager",
                                      "ps -eo pid,ppid,stat,etimes,wchan:30,cmd --forest",
                                      "journalctl -u labinstall --no-pager | tail -40"])
        if p.lab.run("systemctl is-active labinstall")[1].strip() not in ("active", "activating"):
            break
    diag(p, "final", BASIC + ["journalctl -b --no-pager -n 150 | cat",
                              "systemctl status labinstall --no-pager | cat"])
