"""Real life in the lab: the host's sleep, hubs and KVM switches, resets, host-critical devices.

phyllod runs in L1 under its packaged unit; devices are plugged into L1 over
QMP and looked for in L2 (its QEMU's ``info usb`` and live XML). The sleep
is a real S3 of L1 (``systemctl suspend``, woken by QMP ``system_wakeup``),
with logind's real PrepareForSleep and delay inhibitor.

L1's xHCI has four USB 2 ports (1-1 … 1-4) and four USB 3 ones (2-1 … 2-4);
a USB 3 device (usb-storage) lands on bus 2.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from lab_phyllod import L2, STICKS_TO_L2, LabPhyllod, keyboard_alias, wait_until

pytestmark = pytest.mark.lab


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def _explain(p: LabPhyllod, device: str) -> str:
    rc, out, err = p.ctl(f"explain {device}")
    assert rc == 0, err
    return out


def _plug_behind(p: LabPhyllod, qdev_id: str, port: str, driver: str = "usb-kbd") -> None:
    """A device in a hub's port (``3.1``: port 1 of the hub in port 3)."""
    p.lab.qmp("device_add", driver=driver, bus="xhci.0", port=port, id=qdev_id)
    p.plugged.append(qdev_id)


def _unplug_hub(p: LabPhyllod, hub: str, behind: list[str]) -> None:
    """device_del of a hub takes what is behind it along (QEMU and the kernel alike)."""
    p.lab.qmp("device_del", id=hub)
    for qdev_id in [hub, *behind]:
        p.plugged.remove(qdev_id)


# ------------------------------------------------------------------ 1. sleep and resume

def test_sleep_takes_usb_devices_back_and_resume_returns_them(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    alias = p.keyboard_in_l2()
    p.wait_journal(r"attached usb:1-1 to l2")
    p.lab.suspend_resume()  # a real S3 of L1
    p.wait_journal(r"the host resumed; attaching devices again")
    wait_until("attached again after resume",
               lambda: _count(rf"attached usb:1-1 to {L2}", p.journal()) >= 2, 90, 0.5)
    p.wait_in_l2(keyboard_alias(p.lab, port=1))
    journal = p.journal()
    assert re.search(r"the host is going to sleep; taking back USB devices", journal)
    assert re.search(rf"detached {alias} from {L2}\n(.*\n)*ready for sleep: 1 devices taken "
                     "back", journal), journal
    # From the whole boot's journal, in time order: phyllod let go of the
    # keyboard before the kernel went to sleep, and attached it after it woke.
    boot = p.sh("journalctl -b -o short-monotonic --no-pager -n 4000")
    events = [line for line in boot.splitlines()
              if re.search(rf"detached {alias}|PM: suspend (entry|exit)|attached usb:1-1", line)]
    last_entry = max(i for i, line in enumerate(events) if "PM: suspend entry" in line)
    around = events[last_entry - 1:last_entry + 3]
    assert f"detached {alias}" in around[0], "\n".join(events)
    assert "PM: suspend exit" in around[2] and "attached usb:1-1" in around[3], \
        "\n".join(events)
    assert p.l2_hostdev_aliases() == [keyboard_alias(p.lab, port=1)]


# ------------------------------------------------------------------ 2. hubs and KVM switches

DESK = f"""\
[[rule]]
name = "the desk behind port 1-3"
match = {{ port_below = "1-3" }}
guest = "{L2}"
debounce = 5
"""


def test_what_is_behind_a_hub_follows_and_a_kvm_switch_burst_converges(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    p.start(DESK)
    p.plug("hub1", port=3, driver="usb-hub")
    _plug_behind(p, "kbd2", "3.1")
    first = keyboard_alias(p.lab, port="3.1")  # ua-phyllod-usb1-3_1-N
    p.wait_in_l2(first)
    assert "by rule 'the desk behind port 1-3' (behind port 1-3)" in _explain(p, "usb:1-3.1")
    hub = _explain(p, "usb:1-3")
    assert "state: host" in hub, hub
    assert p.l2_hostdev_aliases() == [first]

    # A KVM switch flips away and back: the hub and all behind it vanish and return.
    # The keyboard's hostdev names a device number it never has again, so it
    # leaves L2 at once; the plug waits out its window and is attached again.
    p.mark_journal()
    _unplug_hub(p, "hub1", ["kbd2"])
    p.wait_journal(r"detaching ua-phyllod-usb1-3_1-\d+ from l2 \(it vanished from the host\)")
    wait_until("the hub gone from L1", lambda: p.lab.run("test -e /sys/bus/usb/devices/1-3")[0])
    p.plug("hub1", port=3, driver="usb-hub")
    _plug_behind(p, "kbd2", "3.1")
    p.wait_journal(r"usb:1-3\.1 .* returned")
    second = keyboard_alias(p.lab, port="3.1")
    assert second != first, "the hub's return is a new enumeration"
    p.wait_in_l2(second)
    wait_until("only the new enumeration in L2", lambda: p.l2_hostdev_aliases() == [second])
    journal = p.journal()
    assert _count(r"detaching ua-phyllod-usb1-3_1", journal) == 1, journal
    assert _count(r"attaching usb:1-3\.1 ", journal) == 1, journal
    assert not re.search(r"unplugged \[?.*usb:1-3\.1", journal), "never believed gone"
    assert "attaching usb:1-3 " not in journal, "the hub itself never moves"


# ------------------------------------------------------------------ 3. re-enumeration, resets

def test_a_reset_in_l1_keeps_the_device_in_l2(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    alias = p.keyboard_in_l2(port=2)

    # De- and re-authorizing the device in L1: the kernel configures it again
    # and L1's usbhid binds, taking it from L2's QEMU (whose view goes stale).
    p.mark_journal()
    p.sh("echo 0 > /sys/bus/usb/devices/1-2/authorized; sleep 1; "
         "echo 1 > /sys/bus/usb/devices/1-2/authorized")
    p.wait_journal(rf"detaching {alias} from {L2} \(its guest lost it to a reset on the host")
    p.wait_journal(rf"detached {alias} from {L2}")
    p.wait_journal(rf"attached usb:1-2 to {L2}")
    p.wait_in_l2(alias)  # same device number: the same alias
    p.wait_host_driver("1-2:1.0", "")
    assert p.l2_hostdev_aliases() == [alias]

    # A port reset (USBDEVFS_RESET, what usbreset does): the kernel reports
    # device number 0 for a moment; nothing moves, L2 keeps it.
    p.mark_journal()
    devnum = int(p.sh("cat /sys/bus/usb/devices/1-2/devnum"))
    p.sh(f"python3 -c 'import fcntl, os; fd = os.open(\"/dev/bus/usb/001/{devnum:03d}\", "
         "os.O_WRONLY); fcntl.ioctl(fd, 0x5514, 0)'")
    time.sleep(3)
    journal = p.journal()
    assert "detaching" not in journal and "plugged in" not in journal, journal
    assert f"ID: {alias}" in p.l2_info_usb()


def test_reset_before_attach_resets_the_port_then_attaches(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    p.start(f"""\
[[rule]]
name = "the flaky adapter"
match = {{ port = "1-4" }}
guest = "{L2}"
reset_before_attach = true
""")
    p.plug("kbd1", port=4)
    p.wait_journal(r"reset usb:1-4 before attaching it")
    p.wait_in_l2(keyboard_alias(p.lab, port=4))
    assert "reset before attach failed" not in p.journal()
    kernel = p.sh("journalctl -k -b --no-pager -n 200")
    assert re.search(r"usb 1-4: reset (full|high)-speed USB device", kernel), kernel


# ------------------------------------------------------------------ 5. host-critical devices

def test_a_hub_carrying_the_only_keyboard_stays_on_the_host(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    # L1's only other keyboard is the PS/2 one (i8042): take it away for the test.
    p.sh("echo serio0 > /sys/bus/serio/drivers/atkbd/unbind")
    try:
        p.plug("hub1", port=3, driver="usb-hub")
        _plug_behind(p, "kbd2", "3.1")
        p.wait_host_driver("1-3.1:1.0", "usbhid")
        # "elsewhere" is not defined: a safe hub would only be pending.
        p.start("""\
[[rule]]
name = "the whole hub"
match = { port = "1-3" }
guest = "elsewhere"
""")
        out = _explain(p, "usb:1-3")
        assert "state: denied" in out, out
        assert re.search(r"usb:1-3 \(a hub\) carries the host's only keyboard, "
                         r".*USB Keyboard \(usb:1-3\.1\)", out), out
        assert 'allow_risks = ["host-keyboard"]' in out
    finally:
        p.sh("echo serio0 > /sys/bus/serio/drivers/atkbd/bind")
    # With the PS/2 keyboard back, the host keeps a keyboard: no longer refused.
    p.ctl("reload")
    wait_until("the hub no longer denied",
               lambda: "no guest 'elsewhere' is defined" in _explain(p, "usb:1-3"))


def test_a_mounted_usb_disk_stays_on_the_host_until_unmounted(lab_phyllod: LabPhyllod):
    p = lab_phyllod
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "stick.img"
        subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-L", "labstick", str(image)], check=True)
        p.lab.qmp("blockdev-add", **{"node-name": "stick0", "driver": "raw",
                                     "file": {"driver": "file", "filename": str(image)}})
        try:
            p.lab.qmp("device_add", driver="usb-storage", bus="xhci.0", port="4",
                      drive="stick0", serial="LABSTICK01", id="stick1")
            p.plugged.append("stick1")
            wait_until("the stick's disk in L1",
                       lambda: p.lab.run("test -b /dev/disk/by-label/labstick")[0] == 0, 60)
            p.sh("mkdir -p /mnt/labstick && mount /dev/disk/by-label/labstick /mnt/labstick")
            try:
                p.start(STICKS_TO_L2)
                out = _explain(p, "usb:2-4")
                assert "state: denied" in out, out
                assert re.search(r"usb:2-4 holds /mnt/labstick \(sd[a-z]\) on the host; "
                                 "unmount it first", out), out
            finally:
                p.sh("umount /mnt/labstick")
            # No uevent, no reload: the kernel's mount table says it changed
            # (POLLPRI on mountinfo, host/holds_watch) and phyllod looks again.
            p.wait_journal(r"attached usb:2-4 to l2")
            stick = keyboard_alias(p.lab, port=4, bus=2)
            p.wait_in_l2(stick)
        finally:
            if "stick1" in p.plugged:
                p.unplug("stick1")
                wait_until("the stick gone from L1",
                           lambda: p.lab.run("test -e /sys/bus/usb/devices/2-4")[0] != 0)
            p.lab.qmp("blockdev-del", **{"node-name": "stick0"})
