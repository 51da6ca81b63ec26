"""Idle means idle: a daemon with nothing to do makes no wake-ups at all (issue 18).

A laptop's battery and a host's C-states pay for every timer a daemon keeps.
phyllod waits on its sockets only (udev's monitor, the bus, libvirt's
events), so with devices present, a policy decided and nothing changing, its
threads never run: the count of context switches over the window is 0, and
so are the CPU ticks (tests/integration/support/wakeups.py says why these
counts and not strace). This is libvirt's test driver, which has no
keepalive; a real libvirtd's keepalive wakes the libvirt thread every few
seconds, a figure bench/share_bench.py reports. The metrics file is on: it is
written after changes only, from a timer that nothing idle arms.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import testbed
import wakeups
from daemon_process import DaemonProcess, NotifySocket, child_env
from policies import rule

pytestmark = pytest.mark.integration

#: Seconds watched. Any periodic timer of a second or more shows in it (the
#: shortest phyllod could have, the debounce and backoff, are ~1 s).
WINDOW = 4.0

# Nothing to attach (an attach on the test driver fails and is retried with
# backoff, which is work): devices that a rule denies or no rule matches.
POLICY = rule("no mass storage", 'interface_class = "08"', action="deny")


def test_an_idle_daemon_never_wakes(tmp_path: Path, usb_testbed: testbed.UsbTestbed):
    usb_testbed.plug("1-1", devnum=2, vendor="046d", product="c52b", interfaces=("030102",))
    usb_testbed.plug("1-2", devnum=3, vendor="0781", product="5583", interfaces=("080650",))
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "10-test.toml").write_text(POLICY)
    notify = NotifySocket(tmp_path / "notify")
    metrics = tmp_path / "phyllod.prom"
    daemon = DaemonProcess(["--policy-dir", str(policy_dir), "--connect", "test:///default",
                            "--metrics-file", str(metrics)],
                           child_env(**usb_testbed.env, NOTIFY_SOCKET=str(notify.path)))
    try:
        notify.wait_for("READY=1")
        daemon.wait_log(r"usb:1-2 .*: denied: denied by rule 'no mass storage'")
        daemon.wait_for("the start's state in the metrics", lambda: metrics.exists() and all(
            line in metrics.read_text() for line in (
                "phyllod_libvirt_connected 1",
                'phyllod_devices{subsystem="usb",state="host",guest=""} 1',
                'phyllod_devices{subsystem="usb",state="denied",guest=""} 1')))
        time.sleep(1.0)  # the start's last writes (status, journal) are done
        woke, ticks = wakeups.over(daemon.proc.pid, WINDOW)
        assert (woke, ticks) == ({name: 0 for name in woke}, 0), daemon.log()[-2000:]
        # The counter sees a wake-up when there is one: a plug is an event.
        mark = daemon.mark()
        before = sum(wakeups.switches(daemon.proc.pid).values())
        usb_testbed.plug("1-3", devnum=4, vendor="046d", product="c52b")
        daemon.wait_log(r"usb:1-3 .*: host: no rule matches", start=mark)
        assert sum(wakeups.switches(daemon.proc.pid).values()) > before
        daemon.wait_for("the plug in the metrics", lambda: 'phyllod_devices{subsystem="usb",'
                        'state="host",guest=""} 2' in metrics.read_text())
    finally:
        daemon.stop()
        notify.close()
