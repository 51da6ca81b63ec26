"""Ask mode end to end: the real daemon on a private system bus, umockdev devices.

libvirt's test driver runs one guest, "test", and cannot attach: an answer
that sends a device there shows as a libvirt refusal naming the guest, which is
enough to see that the answer reached reconcile (the lab shows the device in
a real guest).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from daemon_process import child_env
from phyllod_on_bus import ROOT, Phyllod, poll

pytestmark = pytest.mark.integration

# debounce = 0: a replug in these tests is a new plug at once (test_real_life
# covers a device that returns within its window).
ASK_KEYS = """\
[settings]
ask_timeout = {timeout}
debounce = 0

[[rule]]
name = "keys"
match = {{ vendor = "1050" }}
action = "ask"

[[rule]]
name = "keyboards"
match = {{ vendor = "0627" }}
action = "ask"

[[rule]]
name = "no storage"
match = {{ vendor = "0781" }}
action = "deny"
"""
KEY = "usb:1050:0407:9741235"


def _requests(phyllod: Phyllod) -> list[dict]:
    r = phyllod.ctl("--json", "requests")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _plug_key(phyllod: Phyllod, devnum: int = 7) -> None:
    phyllod.tb.plug("1-3", devnum=devnum, vendor="1050", product="0407", serial="9741235",
                    manufacturer="Yubico", product_name="YubiKey OTP+FIDO+CCID",
                    interfaces=("030101", "0b0000"))


def test_inserted_device_is_asked_and_the_answer_decides(phyllod: Phyllod):
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=60))
    phyllod.start()
    # The keyboard was there at start: never asked about.
    assert _requests(phyllod) == []
    kbd = phyllod.show("usb:1-2")
    assert kbd["State"] == "host" and "present at start" in kbd["Reason"]

    _plug_key(phyllod)
    (request,) = poll(lambda: _requests(phyllod))
    assert request["DeviceId"] == "usb:1-3" and request["Candidates"] == ["test"]
    assert request["Rule"] == "keys" and "Yubico" in request["Description"]
    assert 55e6 < request["Deadline"] - time.time() * 1e6 <= 60e6
    shown = phyllod.show("usb:1-3")
    assert shown["State"] == "asking" and "'test' or the host" in shown["Reason"]
    table = phyllod.ctl("requests").stdout
    assert table.splitlines()[1].split()[:2] == [str(request["Id"]), "usb:1-3"]

    n = str(request["Id"])
    # Without polkit only root may answer; a wrong guest is refused; nothing moves.
    r = phyllod.ctl("answer", n, "test", nobody=True)
    assert r.returncode == 4, r.stderr
    r = phyllod.ctl("answer", n, "elsewhere")
    assert r.returncode == 3 and "not one of the guests offered" in r.stderr
    assert phyllod.ctl("answer", "99", "--host").returncode == 3
    assert len(_requests(phyllod)) == 1

    r = phyllod.ctl("answer", n, "test")
    assert r.returncode == 1 and "not supported by the connection driver" in r.stderr
    assert _requests(phyllod) == []
    shown = phyllod.show("usb:1-3")
    assert shown["Guest"] == "test" and shown["Remembered"] is False
    assert shown["State"] == "failed" and "virDomainAttachDeviceFlags" in shown["Reason"]
    # Answered once: the request is gone for good; a second answer gets NoSuchRequest.
    r = phyllod.ctl("answer", n, "--host")
    assert r.returncode == 3 and "answered, expired or withdrawn" in r.stderr
    log = phyllod.proc.log() if phyllod.proc else ""
    assert "to test by your answer: libvirt attachDeviceFlags" in log


def test_remember_survives_replug_and_restart_until_forgotten(phyllod: Phyllod):
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=60))
    phyllod.start()
    _plug_key(phyllod)
    (request,) = poll(lambda: _requests(phyllod))
    r = phyllod.ctl("answer", str(request["Id"]), "--host", "--remember")
    assert r.returncode == 0, r.stderr
    shown = phyllod.show("usb:1-3")
    assert (shown["State"], shown["Remembered"], shown["RememberedGuest"]) == ("host", True, "")
    assert shown["Identity"] == KEY
    status = json.loads(phyllod.ctl("--json", "status").stdout)
    assert status["Remembered"] == {KEY: ""}
    saved = json.loads((phyllod.state_dir / "answers.json").read_text())
    assert [(a["identity"], a["guest"]) for a in saved["answers"]] == [(KEY, "")]

    # Replugged (new device number): not asked again, the remembered answer applies.
    phyllod.tb.unplug("1-3")
    _plug_key(phyllod, devnum=8)
    assert poll(lambda: phyllod.show("usb:1-3")["DeviceNumber"] == 8)
    time.sleep(0.5)
    assert _requests(phyllod) == []
    assert phyllod.show("usb:1-3")["Reason"] == "kept on the host by a remembered answer"

    # A restart reads it back.
    phyllod.stop()
    phyllod.start()
    assert phyllod.show("usb:1-3")["Remembered"] is True

    # Forget by identity (works for an unplugged device too), as nobody first.
    assert phyllod.ctl("forget", KEY, nobody=True).returncode == 4
    assert phyllod.ctl("forget", KEY).returncode == 0
    assert phyllod.ctl("forget", KEY).returncode == 3  # nothing left to forget
    assert phyllod.show("usb:1-3")["Remembered"] is False
    phyllod.tb.unplug("1-3")
    _plug_key(phyllod, devnum=9)
    assert poll(lambda: _requests(phyllod))


def test_deadline_unplug_and_deny(phyllod: Phyllod):
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=2))
    phyllod.start()
    _plug_key(phyllod)
    assert poll(lambda: _requests(phyllod))
    # No answer: after the deadline the request is gone and the device stays home.
    assert poll(lambda: not _requests(phyllod), timeout=10)
    shown = phyllod.show("usb:1-3")
    assert shown["State"] == "host" and "no answer before the deadline" in shown["Reason"]

    # An unplug withdraws an open request.
    phyllod.tb.unplug("1-3")
    _plug_key(phyllod, devnum=8)
    assert poll(lambda: _requests(phyllod))
    phyllod.tb.unplug("1-3")
    assert poll(lambda: not _requests(phyllod), timeout=1.5)

    # A deny rule is never asked about.
    phyllod.tb.plug("1-4", devnum=9, vendor="0781", product="5567")
    assert poll(lambda: phyllod.show("usb:1-4").get("State") == "denied")
    assert _requests(phyllod) == []
    log = phyllod.proc.log() if phyllod.proc else ""
    assert "no answer before the deadline" in log and "withdrawn: unplugged" in log


def test_unmatched_devices_are_asked_when_the_setting_says_so(phyllod: Phyllod):
    (phyllod.policy_dir / "10-ask.toml").write_text('[settings]\nunmatched = "ask"\n')
    phyllod.start()
    assert _requests(phyllod) == []
    status = json.loads(phyllod.ctl("--json", "status").stdout)
    assert status["AskTimeout"] == 30
    _plug_key(phyllod)
    (request,) = poll(lambda: _requests(phyllod))
    assert request["Rule"] == "" and request["Device"] == f"{ROOT}/devices/usb_1_3"
    # A reload that makes the device ignored takes the question back.
    (phyllod.policy_dir / "10-ask.toml").write_text(
        '[settings]\nunmatched = "ask"\n[[rule]]\nname = "i"\nmatch = { vendor = "1050" }\n'
        'action = "ignore"\n')
    assert phyllod.ctl("reload").returncode == 0
    assert poll(lambda: not _requests(phyllod), timeout=5)


def test_real_polkitd_refuses_an_answer_outside_the_active_session(
        phyllod: Phyllod, real_polkit):
    """allow_any is "no": a caller with no active local session (nobody) cannot answer."""
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=60))
    phyllod.start()
    _plug_key(phyllod)
    (request,) = poll(lambda: _requests(phyllod))
    path = f"{ROOT}/requests/{request['Id']}"
    r = phyllod.call("Answer", "sb", "", "false", path=path,
                     interface="me.phyllo.Phyllod1.Request", nobody=True)
    assert r.returncode != 0 and "polkit denied me.phyllo.phyllod.answer" in r.stderr
    assert len(_requests(phyllod)) == 1
    r = phyllod.call("Answer", "sb", "", "true", path=path,
                     interface="me.phyllo.Phyllod1.Request")
    assert r.returncode == 0, r.stderr
    assert phyllod.show("usb:1-3")["Remembered"] is True


def test_monitor_shows_requests_as_they_come(phyllod: Phyllod):
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=60))
    phyllod.start()
    mon = subprocess.Popen([sys.executable, "-m", "phyllod.ctl", "--bus", phyllod.bus.address,
                            "monitor"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=child_env())
    try:
        assert mon.stdout is not None and "monitoring" in mon.stdout.readline()
        _plug_key(phyllod)
        (request,) = poll(lambda: _requests(phyllod))
        assert phyllod.ctl("answer", str(request["Id"]), "--host").returncode == 0
    finally:
        mon.send_signal(signal.SIGINT)
        out, _ = mon.communicate(timeout=10)
    n = request["Id"]
    assert f" + request {n} asks where usb:1-3 goes: test,host (usb:1-3 (1050:0407 " in out, out
    assert f" - request {n} closed" in out, out
    assert "usb:1-3 plugged 1050:0407 'YubiKey OTP+FIDO+CCID' state asking" in out, out
