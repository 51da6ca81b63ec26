"""The daemon as systemd runs it: a subprocess, a NOTIFY_SOCKET, signals.

Devices come from a umockdev testbed (real uevents), guests from a real
private libvirtd running QEMU, or from libvirt's test driver where a guest
must already hold hostdevs. This machine kind's kernel has no USB, so a real
attach ends in libvirt's own error here: the tests assert phyllod reports it
and keeps going. Success is proven in the lab.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import libvirtd
import pytest
import testbed
from daemon_process import DaemonProcess, NotifySocket, child_env
from guest_xml import driver_guest, node, qemu_guest, usb_hostdev
from policies import KEYBOARD_TO_WORK, rule

pytestmark = pytest.mark.integration

NO_USB = "cannot open directory '/sys/bus/usb/devices'"

Start = Callable[..., tuple[DaemonProcess, NotifySocket]]
StartOnWork = Callable[..., tuple[DaemonProcess, NotifySocket]]


@pytest.fixture
def start_daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Start]:
    """Start phyllod on a policy text and a libvirt URI, under the testbed."""
    started: list[tuple[DaemonProcess, NotifySocket]] = []
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()

    def start(policy: str, uri: str, tb: testbed.UsbTestbed,
              extra_env: dict[str, str] | None = None) -> tuple[DaemonProcess, NotifySocket]:
        if policy:
            (policy_dir / "10-test.toml").write_text(policy)
        notify = NotifySocket(tmp_path / f"notify-{len(started)}")
        env = child_env(**tb.env, NOTIFY_SOCKET=str(notify.path), **(extra_env or {}))
        proc = DaemonProcess(["--policy-dir", str(policy_dir), "--connect", uri], env)
        started.append((proc, notify))
        return proc, notify

    start.policy_dir = policy_dir  # type: ignore[attr-defined]
    yield start
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else True
    for proc, notify in started:
        if proc.alive:
            proc.stop()
        if failed:
            print(f"--- daemon log ---\n{proc.log()}")
        notify.close()


@pytest.fixture
def ready_on_work(start_daemon: Start, private_libvirtd: libvirtd.PrivateLibvirtd,
                  usb_testbed: testbed.UsbTestbed) -> StartOnWork:
    """Start phyllod on a policy (keyboards to 'work' unless given), with the guest
    'work' running on the private libvirtd, and wait for READY=1."""
    def start(policy: str = KEYBOARD_TO_WORK) -> tuple[DaemonProcess, NotifySocket]:
        libvirtd.start_guest(private_libvirtd.uri, "work")
        daemon, notify = start_daemon(policy, private_libvirtd.uri, usb_testbed)
        notify.wait_for("READY=1")
        return daemon, notify
    return start


def test_coldplug_attach_error_is_reported_retried_and_survived(
        start_daemon: Start, private_libvirtd: libvirtd.PrivateLibvirtd,
        usb_testbed: testbed.UsbTestbed):
    libvirtd.start_guest(private_libvirtd.uri, "work")
    usb_testbed.plug("1-2", devnum=5)
    daemon, notify = start_daemon(KEYBOARD_TO_WORK, private_libvirtd.uri, usb_testbed)
    notify.wait_for("READY=1")
    daemon.wait_log(r"usb:1-2 \(0627:0001 QEMU QEMU USB Keyboard\) present at start")
    daemon.wait_log(r"attaching usb:1-2 .* to work by rule .keyboard.: libvirt attachDeviceFlags")
    daemon.wait_log(rf"attach usb:1-2 to work failed: {NO_USB}")
    daemon.wait_log(r"usb:1-2 .*: failed guest=work: attach failed \(attempt 1, retry in "
                    r".*\[device=usb:1-2 guest=work rule=keyboard state=failed\]")
    # Backoff: a second attempt comes, and fails the same way.
    daemon.wait_log(r"attach failed \(attempt 2, retry in")
    notify.wait_for("STATUS=1 devices: 1 failed")
    # Still serving: a hotplugged device no rule matches stays on the host.
    usb_testbed.plug("1-3", devnum=6, vendor="046d", product="c52b")
    daemon.wait_log(r"usb:1-3 \(046d:c52b .*\): host: no rule matches; stays on the host")
    assert daemon.stop() == 0
    notify.wait_for("STOPPING=1")
    assert "Traceback" not in daemon.log()


def test_pending_until_the_guest_runs_and_back_when_it_stops(
        start_daemon: Start, private_libvirtd: libvirtd.PrivateLibvirtd,
        usb_testbed: testbed.UsbTestbed):
    conn = libvirt.open(private_libvirtd.uri)
    dom = conn.defineXML(qemu_guest("work"))
    daemon, notify = start_daemon(KEYBOARD_TO_WORK, private_libvirtd.uri, usb_testbed)
    notify.wait_for("READY=1")
    usb_testbed.plug("1-2", devnum=5)
    daemon.wait_log(r"usb:1-2 .*: pending guest=work: guest 'work' is not running")
    mark = daemon.mark()
    dom.create()
    daemon.wait_log(r"guest work is running", start=mark)
    daemon.wait_log(r"attaching usb:1-2 .* to work", start=mark)
    daemon.wait_log(rf"attach usb:1-2 to work failed: {NO_USB}", start=mark)
    mark = daemon.mark()
    dom.destroy()
    daemon.wait_log(r"guest work is shutoff", start=mark)
    daemon.wait_log(r"usb:1-2 .*: pending guest=work: guest 'work' is not running", start=mark)
    # Unplugged: the device is forgotten, nothing is attempted.
    mark = daemon.mark()
    usb_testbed.unplug("1-2")
    daemon.wait_log(r"usb:1-2 .* unplugged", start=mark)
    conn.close()
    assert daemon.alive


def test_broken_policy_reload_keeps_the_previous_one(
        start_daemon: Start, usb_testbed: testbed.UsbTestbed):
    daemon, notify = start_daemon(KEYBOARD_TO_WORK, "test:///default", usb_testbed)
    notify.wait_for("READY=1")
    policy_file = start_daemon.policy_dir / "10-test.toml"  # type: ignore[attr-defined]
    policy_file.write_text(KEYBOARD_TO_WORK + "\n" + rule("bad", 'vendor = "xyz"', guest="work"))
    mark = daemon.mark()
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(rf"policy: {policy_file}:8: rule 'bad': vendor must be 4 hex digits",
                    start=mark)
    daemon.wait_log(r"policy reload refused; the previous policy stays in force", start=mark)
    notify.wait_for("RELOADING=1")
    # The previous policy still decides.
    usb_testbed.plug("1-2", devnum=5)
    daemon.wait_log(r"usb:1-2 .*: pending guest=work: no guest 'work' is defined", start=mark)
    policy_file.write_text(KEYBOARD_TO_WORK.replace('"work"', '"test"'))
    mark = daemon.mark()
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"policy: 1 rules from 1 files", start=mark)
    # The test driver cannot hot-plug: libvirt says so, phyllod reports it.
    daemon.wait_log(r"attach usb:1-2 to test failed: this function is not supported", start=mark)
    assert daemon.alive


def test_policy_broken_at_start_moves_nothing(
        start_daemon: Start, usb_testbed: testbed.UsbTestbed):
    usb_testbed.plug("1-2", devnum=5)
    daemon, notify = start_daemon('[[rule]]\nname = "x"\nmatch = { vendr = "0627" }\n'
                                  'guest = "test"\n', "test:///default", usb_testbed)
    notify.wait_for("READY=1")
    daemon.wait_log(r"10-test.toml:3: rule 'x': unknown match key 'vendr'")
    daemon.wait_log(r"no usable policy: phyllod moves nothing")
    daemon.wait_log(r"usb:1-2 .*: host: the policy has errors")
    assert notify.wait_for("STATUS=1 devices: 1 host; policy has errors")
    assert "attaching" not in daemon.log()


NODE_XML = node(driver_guest("work", uuid="8f1b2a6e-0d8e-4a57-9a1c-7f4bd1f0c2aa", hostdevs=(
    usb_hostdev("0627", "0001", bus=1, device=5, alias="ua-phyllod-usb1-2-5"),
    usb_hostdev("0627", "0001", bus=1, device=9, alias="ua-phyllod-usb1-3-9"))))


def test_restart_adopts_what_the_guest_holds_and_removes_stale_hostdevs(
        start_daemon: Start, usb_testbed: testbed.UsbTestbed, tmp_path: Path):
    """After a restart nothing is attached twice; what was unplugged meanwhile goes."""
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    usb_testbed.plug("1-2", devnum=5)
    daemon, notify = start_daemon(KEYBOARD_TO_WORK, f"test://{node}", usb_testbed)
    notify.wait_for("READY=1")
    daemon.wait_log(r"usb:1-2 .*: attached guest=work: attached to 'work' by rule 'keyboard'")
    daemon.wait_log(r"detaching ua-phyllod-usb1-3-9 from work \(the device is gone\)")
    assert "attaching" not in daemon.log()


def test_libvirtd_restart_is_survived_and_resynced(
        ready_on_work: StartOnWork, private_libvirtd: libvirtd.PrivateLibvirtd,
        usb_testbed: testbed.UsbTestbed):
    daemon, notify = ready_on_work()
    daemon.wait_log(r"connected to .*: 1 guests, 1 running")
    mark = daemon.mark()
    private_libvirtd.stop()
    daemon.wait_log(r"lost the connection to .* \(libvirtd closed the connection\)", start=mark)
    notify.wait_for(f"STATUS=0 devices; waiting for libvirt at {private_libvirtd.uri}")
    usb_testbed.plug("1-2", devnum=5)
    daemon.wait_log(r"usb:1-2 .*: pending guest=work: libvirt is not connected", start=mark)
    private_libvirtd.start()
    daemon.wait_log(r"connected to .*: 1 guests, 1 running", start=mark, timeout=40)
    daemon.wait_log(rf"attach usb:1-2 to work failed: {NO_USB}", start=mark)
    assert daemon.alive


def test_two_identical_devices_only_the_ruled_port_moves(
        ready_on_work: StartOnWork, usb_testbed: testbed.UsbTestbed):
    policy = '[[rule]]\nname = "left"\nmatch = { vendor = "0627", port = "1-2" }\nguest = "work"\n'
    daemon, _ = ready_on_work(policy)
    usb_testbed.plug("1-2", devnum=3)
    usb_testbed.plug("1-3", devnum=4)
    daemon.wait_log(r"attaching usb:1-2 .* \(bus 1 device 3\)")
    daemon.wait_log(r"usb:1-3 .*: host: no rule matches")
    daemon.wait_log(r"attach failed \(attempt 2")
    assert "attaching usb:1-3" not in daemon.log()


def test_a_flapping_device_never_races_itself(
        ready_on_work: StartOnWork, usb_testbed: testbed.UsbTestbed):
    daemon, _ = ready_on_work()
    last = 0
    for devnum in range(2, 42):
        usb_testbed.plug("1-2", devnum=devnum)
        last = devnum
        if devnum < 41:
            usb_testbed.unplug("1-2")
    # The end state follows the last event: the last enumeration is attempted.
    daemon.wait_log(rf"attaching usb:1-2 .* \(bus 1 device {last}\)")
    daemon.wait_log(rf"usb:1-2 .*: failed guest=work: attach failed \(attempt 1.*{NO_USB}")
    lines = daemon.log().splitlines()
    in_flight = 0
    for line in lines:
        if "attaching usb:1-2" in line:
            in_flight += 1
            assert in_flight == 1, "a second attach of the slot while one was in flight"
        elif "attach usb:1-2 to work failed" in line or "attached usb:1-2" in line:
            in_flight -= 1
    assert daemon.alive and "Traceback" not in daemon.log()


def test_watchdog_pings_come_from_the_loop(start_daemon: Start,
                                           usb_testbed: testbed.UsbTestbed):
    proc, notify = start_daemon("", "test:///default", usb_testbed,
                                extra_env={"WATCHDOG_USEC": "200000"})
    notify.wait_for("READY=1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(notify.wait_for("WATCHDOG=1")) < 5:
        time.sleep(0.1)
    assert len(notify.wait_for("WATCHDOG=1")) >= 5, "pings every WatchdogSec/2"
    # A hung loop stops pinging, which is what lets systemd restart it.
    proc.signal(signal.SIGSTOP)
    before = len(notify.wait_for("WATCHDOG=1"))
    time.sleep(0.6)
    assert len(notify.wait_for("WATCHDOG=1")) == before
    proc.signal(signal.SIGCONT)


FACTS_READ = re.compile(r"host facts read (\d+) times \(pci (\d+), holds (\d+); "
                        r"mounts looked at (\d+), computed (\d+)\)")


def _facts_reads(daemon: DaemonProcess) -> tuple[int, ...]:
    """(reads of any part, of the PCI part, of what the host holds, looks at the mounts
    (their texts read, the block devices' fingerprint taken: only after news of a
    mount, swap or block device, host/holds_watch), computes of the mounts: the other
    looks found them and the block devices unchanged) so far."""
    mark = daemon.mark()
    daemon.signal(signal.SIGUSR1)
    match = daemon.wait_log(FACTS_READ.pattern, start=mark)
    return tuple(int(n) for n in match.groups())


def _since(before: tuple[int, ...], daemon: DaemonProcess) -> tuple[int, ...]:
    return tuple(a - b for a, b in zip(_facts_reads(daemon), before, strict=True))


def test_one_plug_reads_the_host_facts_once(
        ready_on_work: StartOnWork, usb_testbed: testbed.UsbTestbed):
    """A plug is several uevents (the device, each interface): the host facts are read
    once for all of them before the decision, not once per event (in a slow VM one
    read costs ~0.3 s, and per event they held the attach back by a second), and of
    them only what a USB device can change (mounts, keyboards), never the PCI part
    (every PCI function's sysfs files, the IOMMU groups)."""
    daemon, _ = ready_on_work()
    before = _facts_reads(daemon)
    mark = daemon.mark()
    daemon.signal(signal.SIGSTOP)  # the uevents queue up, as they do behind a slow turn
    try:
        usb_testbed.plug("1-2", devnum=5, interfaces=("030101", "030000", "e00101"))
    finally:
        daemon.signal(signal.SIGCONT)
    daemon.wait_log(r"attaching usb:1-2 .* \(bus 1 device 5\)", start=mark)
    # Read once; the mounts not even looked at: nothing was mounted, no disk came.
    assert _since(before, daemon) == (1, 0, 1, 0, 0)


def test_usb_plugs_and_unplugs_never_read_the_pci_part(
        ready_on_work: StartOnWork, usb_testbed: testbed.UsbTestbed):
    """Uevents as they come, one turn each if they come apart: USB plugs and unplugs
    read what the host holds at most once per uevent, the PCI part never."""
    daemon, _ = ready_on_work()
    before = _facts_reads(daemon)
    mark = daemon.mark()
    for devnum, port in enumerate(("1-2", "1-3", "1-4"), start=5):
        usb_testbed.plug(port, devnum=devnum, interfaces=("030101", "030000"))
    for port in ("1-2", "1-3", "1-4"):
        daemon.wait_log(rf"attaching usb:{port} ", start=mark)
        usb_testbed.unplug(port)
        daemon.wait_log(rf"usb:{port} .* vanished", start=mark)
    reads, pci, holds, looked, computed = _since(before, daemon)
    # The uevents that reach the loop: each device's add (its interfaces' adds are
    # dropped, since the device's add named them) and its remove (an interface's
    # remove tells nothing).
    uevents = 3 + 3
    assert pci == 0 and 1 <= holds == reads <= uevents, (reads, pci, holds)
    assert looked == computed == 0, (looked, computed)  # no disk came or went


def test_a_block_device_makes_the_mounts_looked_at_again(
        ready_on_work: StartOnWork, usb_testbed: testbed.UsbTestbed):
    """A plug's turn takes the mounts as last looked at; news of a block device (a
    stick's disk, a re-created node, a device-mapper table) makes them looked at
    again, in a turn of its own (host/holds_watch), and the PCI part stays unread."""
    daemon, _ = ready_on_work()
    before = _facts_reads(daemon)
    usb_testbed.tb.add_device("block", "loop7", None, ["dev", "7:7"], ["DEVTYPE", "disk"])
    deadline = time.monotonic() + 10
    while (since := _since(before, daemon))[3] == 0:
        assert time.monotonic() < deadline, f"the block device's uevent went unheard: {since}"
        time.sleep(0.1)
    reads, pci, holds, looked, computed = since
    assert (reads, pci, holds, looked) == (1, 0, 1, 1), since
    assert computed == 1, "a new disk is a new fingerprint"
