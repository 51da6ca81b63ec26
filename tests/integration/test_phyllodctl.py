"""phyllodctl against the real daemon on a private system bus with the shipped policy."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from daemon_process import child_env
from phyllod_on_bus import Phyllod

pytestmark = pytest.mark.integration


def test_read_commands_tables_and_json(phyllod: Phyllod):
    phyllod.start()
    r = phyllod.ctl("list")
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()[:2]
    assert header.split() == ["ID", "VID:PID", "NAME", "STATE", "GUEST", "RULE"]
    assert row.split() == ["usb:1-2", "0627:0001", "QEMU", "USB", "Keyboard", "host", "-", "-"]
    devices = json.loads(phyllod.ctl("--json", "list").stdout)
    assert [(d["Id"], d["State"]) for d in devices] == [("usb:1-2", "host")]
    guests = json.loads(phyllod.ctl("--json", "guests").stdout)
    assert [g["Name"] for g in guests] == ["test"]
    show = phyllod.ctl("show", "0627:0001").stdout
    assert re.search(r"\nReason: +no rule matches; stays on the host\n", show), show
    assert phyllod.show("usb:1-2")["Vendor"] == "0627"
    explain = phyllod.ctl("explain", "/me/phyllo/Phyllod1/devices/usb_1_2")
    assert explain.returncode == 0 and "no rule matches; stays on the host" in explain.stdout
    status = json.loads(phyllod.ctl("--json", "status").stdout)
    assert status["PolicyStatus"] == "ok" and status["LibvirtConnected"] is True


def test_changes_and_exit_codes(phyllod: Phyllod):
    phyllod.start()
    assert phyllod.ctl("show", "dead:beef").returncode == 3
    r = phyllod.ctl("attach", "usb:1-2", "nosuch")
    assert r.returncode == 3 and "no guest named 'nosuch'" in r.stderr
    r = phyllod.ctl("attach", "usb:1-2", "test")  # the test driver cannot attach
    assert r.returncode == 1 and "not supported by the connection driver" in r.stderr
    assert phyllod.ctl("detach", "usb:1-2").returncode == 0
    shown = phyllod.show("usb:1-2")
    assert (shown["State"], shown["Override"]) == ("host", "host")
    assert phyllod.ctl("clear", "usb:1-2").returncode == 0
    assert phyllod.show("usb:1-2")["Override"] == ""
    assert phyllod.ctl("reload").returncode == 0
    # Without polkit only root may change anything; nobody may still read.
    r = phyllod.ctl("detach", "usb:1-2", nobody=True)
    assert r.returncode == 4, r.stderr
    assert phyllod.ctl("list", nobody=True).returncode == 0
    phyllod.stop()
    r = phyllod.ctl("list")
    assert r.returncode == 5 and "Traceback" not in r.stderr


def test_hostile_device_strings_do_not_reach_the_terminal(phyllod: Phyllod):
    phyllod.tb.plug("1-3", devnum=6, vendor="1234", product="5678",
                    manufacturer="\x1b]0;pwned\x07Evil", product_name="\x1b[2J<hostdev/>\"'",
                    serial="\x1b[31mS" + "A" * 300)
    phyllod.start()
    for args in (("list",), ("show", "usb:1-3"), ("explain", "usb:1-3")):
        out = phyllod.ctl(*args).stdout
        assert "\x1b" not in out and "\x07" not in out, args
    data = phyllod.show("usb:1-3")
    assert "\x1b" not in data["Manufacturer"] and "Evil" in data["Manufacturer"]


def test_monitor_streams_changes_live(phyllod: Phyllod):
    phyllod.start()
    argv = [sys.executable, "-m", "phyllod.ctl", "--bus", phyllod.bus.address, "--json",
            "monitor"]
    mon = subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    events: list[dict] = []
    cond = threading.Condition()

    def read() -> None:
        assert mon.stdout is not None
        for line in mon.stdout:
            with cond:
                events.append(json.loads(line))
                cond.notify_all()

    def wait_for(check, what: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        with cond:
            while True:
                for e in events:
                    if check(e):
                        return e
                left = deadline - time.monotonic()
                assert left > 0, f"monitor never showed {what}: {events}"
                cond.wait(left)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda e: e["event"] == "monitoring", "that it listens")
        phyllod.tb.plug("1-3", devnum=6)
        added = wait_for(lambda e: e["event"] == "added" and e["subject"] == "usb:1-3",
                         "the plug")
        assert added["properties"]["State"] == "host"
        phyllod.ctl("detach", "usb:1-3")
        wait_for(lambda e: e["event"] == "changed" and e["subject"] == "usb:1-3"
                 and e["properties"].get("Override") == "host", "the override")
        phyllod.tb.unplug("1-3")
        wait_for(lambda e: e["event"] == "removed" and e["subject"] == "usb:1-3", "the unplug")
    finally:
        mon.send_signal(signal.SIGINT)
        code = mon.wait(10)
        reader.join(5)
    assert code == 0, mon.stderr.read() if mon.stderr else ""
