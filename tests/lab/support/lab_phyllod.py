"""phyllod inside the lab's L1, driven the way a person or systemd would.

phyllod is installed in L1 from its Debian package, built on the host from the
checkout (packaging/build-deb) and read by L1 over the 9p share: it runs as
the package ships it, under systemd/phyllod.service (Type=notify, so
``systemctl restart`` returns once phyllod sent READY=1, with all its
hardening), with Debian's own python3-libvirt/pyudev/systemd/dbus-fast, on
L1's system bus with the packaged bus policy, polkit actions and bus
activation file, and logs to L1's journal, which the tests read back with
journalctl.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies import rule

L2 = "l2"
#: Keyboards (QEMU's usb-kbd, 0627:0001) go to L2: the policy most lab tests run on.
KBD_TO_L2 = rule(f"keyboards go to {L2}", 'vendor = "0627", product = "0001"', guest=L2)
#: USB sticks (QEMU's usb-storage, 46f4:0001) go to L2.
STICKS_TO_L2 = rule(f"sticks go to {L2}", 'vendor = "46f4"', guest=L2)
UNIT = "phyllod"
#: Where tests put their own drop-ins for the packaged unit (watchdog timing).
DROPIN_DIR = f"/etc/systemd/system/{UNIT}.service.d"
REPO = Path(__file__).resolve().parents[3]
#: Where the host builds the .deb: inside the checkout, so L1 sees it over 9p.
DEB_DIR = REPO / "build" / "deb"
#: In L1: the hash of the .deb installed there (build-deb writes the host's).
INSTALLED_HASH = "/var/lib/phyllod-lab.deb.hash"


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0,
               interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def keyboard_alias(lab: Any, port: int | str, bus: int = 1) -> str:
    """The alias phyllod gives the device now in L1's port ``bus``-``port`` (``3.1``
    is port 1 of the hub in port 3)."""
    name = f"{bus}-{port}"
    devnum = wait_until(f"{name} in L1's sysfs", lambda: _read(lab, f"{name}/devnum"))
    return f"ua-phyllod-usb{name.replace('.', '_')}-{int(devnum)}"


def _read(lab: Any, attr: str) -> str:
    rc, out, _ = lab.run(f"cat /sys/bus/usb/devices/{attr} 2>/dev/null")
    return out.strip() if rc == 0 else ""


class LabPhyllod:
    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.plugged: list[str] = []
        self.cursor = ""

    # ------------------------------------------------------------ L1 shell

    def sh(self, cmd: str, timeout: float = 120.0) -> str:
        rc, out, err = self.lab.run(cmd, timeout=timeout)
        if rc != 0:
            raise AssertionError(f"in L1: {cmd!r} exited {rc}:\n{out}\n{err}")
        return out

    def virsh(self, args: str) -> str:
        return self.sh(f"virsh {args}")

    # ------------------------------------------------------------ phyllod

    def install(self) -> None:
        """Install phyllod's Debian package in L1, as a user would; once per checkout state.

        The host builds it from the checkout (packaging/build-deb, cached by a
        hash of the tree), L1 installs it from the 9p share: the lab then
        tests what a distribution ships (unit, bus policy, activation file,
        polkit actions, /usr/bin/phyllod), not a copy of the checkout.
        """
        subprocess.run([str(REPO / "packaging" / "build-deb"), str(DEB_DIR)], check=True,
                       stdout=subprocess.DEVNULL)
        share = f"/opt/phyllod/{DEB_DIR.relative_to(REPO)}"
        self.sh(f"cmp -s {share}/phyllod.deb.hash {INSTALLED_HASH} || "
                f"{{ DEBIAN_FRONTEND=noninteractive dpkg -i {share}/phyllod_*_all.deb "
                f"{share}/phyllod-applet_*_all.deb && "
                "busctl call org.freedesktop.DBus /org/freedesktop/DBus "
                "org.freedesktop.DBus ReloadConfig && "
                f"cp {share}/phyllod.deb.hash {INSTALLED_HASH}; }}", timeout=300)

    def mark_journal(self) -> None:
        """journal() shows only what phyllod logs from now on."""
        out = self.sh("journalctl -n 0 --show-cursor --no-pager")
        match = re.search(r"-- cursor: (\S+)", out)
        self.cursor = match.group(1) if match else ""

    def start(self, policy: str) -> None:
        """Write the policy and (re)start phyllod under its unit; returns after READY=1."""
        self.install()
        self.lab.write_file("/etc/phyllod/policy.d/10-lab.toml", policy)
        self.mark_journal()
        rc, out, err = self.lab.run(f"systemctl reset-failed {UNIT} 2>/dev/null; "
                                    f"systemctl restart {UNIT}", timeout=180)
        if rc != 0:
            status = self.lab.run(f"systemctl status --no-pager -l {UNIT}")[1]
            raise AssertionError(f"in L1: systemctl restart {UNIT} exited {rc}:\n{out}{err}\n"
                                 f"{status}\n--- phyllod's journal ---\n{self.journal()}")

    def main_pid(self) -> int:
        return int(self.sh(f"systemctl show -P MainPID {UNIT}").strip() or 0)

    def ctl(self, args: str, timeout: float = 120.0) -> tuple[int, str, str]:
        """``phyllodctl ARGS`` in L1, as root: (exit code, stdout, stderr)."""
        return self.lab.run(f"phyllodctl {args}", timeout=timeout)

    def stop(self) -> None:
        self.lab.run(f"systemctl stop {UNIT}; systemctl reset-failed {UNIT} 2>/dev/null")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would; returns once that process is gone.

        The unit says Restart=on-failure, so systemd starts phyllod again
        RestartSec= later; a test that wants it back now calls start().
        """
        pid = self.main_pid()
        self.sh(f"systemctl kill --signal=KILL {UNIT}")
        wait_until("phyllod to be gone", lambda: self.main_pid() != pid
                   and self.lab.run(f"test -d /proc/{pid}")[0] != 0)

    def journal(self) -> str:
        after = f"--after-cursor={shlex.quote(self.cursor)} " if self.cursor else ""
        return self.sh(f"journalctl -u {UNIT} {after}-o cat --no-pager")

    def wait_journal(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        regex = re.compile(pattern)
        try:
            return wait_until(f"journal line {pattern!r}",
                              lambda: regex.search(self.journal()), timeout, 0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- phyllod's journal ---\n{self.journal()}") from None

    # ------------------------------------------------------------ devices

    def keyboard_in_l2(self, policy: str = KBD_TO_L2, port: int = 1) -> str:
        """Start on ``policy``, plug a keyboard (``kbd1``) into ``port`` and wait
        until L2 holds it; returns its alias."""
        self.start(policy)
        self.plug("kbd1", port=port)
        alias = keyboard_alias(self.lab, port=port)
        self.wait_in_l2(alias)
        return alias

    def plug(self, qdev_id: str, port: int, driver: str = "usb-kbd") -> None:
        """QMP device_add into L1's xHCI, as a person plugs hardware in."""
        self.lab.qmp("device_add", driver=driver, bus="xhci.0", port=str(port), id=qdev_id)
        self.plugged.append(qdev_id)

    def unplug(self, qdev_id: str) -> None:
        self.lab.qmp("device_del", id=qdev_id)
        self.plugged.remove(qdev_id)

    def host_driver(self, name: str) -> str:
        rc, out, _ = self.lab.run(f"basename $(readlink /sys/bus/usb/devices/{name}/driver)")
        return out.strip() if rc == 0 else ""

    def wait_host_driver(self, name: str, driver: str) -> None:
        wait_until(f"{name} bound to {driver} in L1", lambda: self.host_driver(name) == driver)

    # ------------------------------------------------------------ L2's view

    def l2_info_usb(self) -> str:
        return self.sh(f"virsh qemu-monitor-command {L2} --hmp 'info usb'")

    def l2_hostdev_aliases(self) -> list[str]:
        """The USB hostdevs in L2's live XML, by alias."""
        root = ET.fromstring(self.virsh(f"dumpxml {L2}"))
        return [a.get("name", "") for a in
                root.iterfind("./devices/hostdev[@type='usb']/alias")]

    def wait_in_l2(self, alias: str, timeout: float = 60.0) -> None:
        try:
            wait_until(f"{alias} in L2's info usb",
                       lambda: f"ID: {alias}" in self.l2_info_usb(), timeout, 0.3)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- phyllod's journal ---\n{self.journal()}") from None

    def wait_not_in_l2(self, alias: str, timeout: float = 60.0) -> None:
        wait_until(f"{alias} gone from L2", lambda: f"ID: {alias}" not in self.l2_info_usb(),
                   timeout, 0.3)

    # ------------------------------------------------------------ between tests

    def reset(self) -> None:
        """Leave L1 and L2 as the next test expects: no phyllod, no devices, L2 running."""
        self.stop()
        self.lab.run("rm -f /var/lib/phyllod/overrides.json /var/lib/phyllod/answers.json")
        # Newest first: a device behind a hub goes before the hub (which takes it along).
        for qdev_id in reversed(list(self.plugged)):
            self.unplug(qdev_id)
        if "running" not in self.virsh(f"domstate {L2}"):
            self.virsh(f"start {L2}")
        for alias in self.l2_hostdev_aliases():
            self.lab.run(f"virsh detach-device-alias {L2} {alias} --live")
        wait_until("L2 without hostdevs", lambda: not self.l2_hostdev_aliases())
