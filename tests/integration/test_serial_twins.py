"""Twins end to end: a person's choice for a device stays with that device when
another unit with the same vendor:product and serial number is plugged in.

The real daemon on a private system bus over umockdev devices and libvirt's
test driver (guest "test" runs; every attach is refused, so a device a choice
sent there shows as ``failed`` naming the guest, and one left alone as
``host``). CSR's 0a12:0001 Bluetooth dongle is the case from life: its clones
ship by the million with one serial number.
"""

from __future__ import annotations

import json

import pytest
from phyllod_on_bus import Phyllod, poll

pytestmark = pytest.mark.integration

SERIAL = "5B8F2F6E3C"
BY_SERIAL = f"usb:0a12:0001:{SERIAL}"
ORIGINAL, TWIN = "usb:1-3", "usb:1-4"
ASK = ('[settings]\ndebounce = 0\n\n[[rule]]\nname = "dongles"\n'
       'match = { vendor = "0a12" }\naction = "ask"\n')


def _dongle(phyllod: Phyllod, port: str, devnum: int, serial: str = SERIAL) -> None:
    phyllod.tb.plug(port, devnum=devnum, vendor="0a12", product="0001", serial=serial,
                    manufacturer="", product_name="", interfaces=("e00101",))


def _stored(phyllod: Phyllod, name: str = "overrides.json") -> dict[str, str]:
    """A state file's entries: identity → guest."""
    key = name.split(".")[0]
    entries = json.loads((phyllod.state_dir / name).read_text())[key]
    return {e["identity"]: e["guest"] for e in entries}


def _where(phyllod: Phyllod, device: str) -> tuple[str, str]:
    shown = phyllod.show(device)
    return shown["State"], shown["Guest"]


def test_an_override_stays_with_its_device_when_a_twin_comes_goes_and_phyllod_restarts(
        phyllod: Phyllod):
    _dongle(phyllod, "1-3", 6)
    phyllod.start()
    assert phyllod.proc is not None
    assert phyllod.show(ORIGINAL)["Identity"] == BY_SERIAL
    r = phyllod.ctl("attach", ORIGINAL, "test")  # the test driver refuses the attach
    assert r.returncode == 1 and "not supported" in r.stderr, r.stderr
    assert _stored(phyllod) == {BY_SERIAL: "test"}
    start = phyllod.proc.mark()

    # The twin comes: the choice stays with the original, now known by the
    # serial at its port.
    _dongle(phyllod, "1-4", 7)
    assert poll(lambda: phyllod.show(TWIN)["SerialDoubt"])
    twin = phyllod.show(TWIN)
    assert (twin["State"], twin["Guest"], twin["Override"]) == ("host", "", ""), twin
    assert f"attaching {TWIN}" not in phyllod.proc.log()[start:]
    original = phyllod.show(ORIGINAL)
    assert (original["State"], original["Guest"]) == ("failed", "test"), original
    assert twin["SerialDoubt"] == f"serial {SERIAL} is shared with {ORIGINAL}"
    assert original["SerialDoubt"] == f"serial {SERIAL} is shared with {TWIN}"
    assert (original["Identity"], twin["Identity"]) == (f"{BY_SERIAL}@1-3", f"{BY_SERIAL}@1-4")
    assert _stored(phyllod) == {f"{BY_SERIAL}@1-3": "test"}
    assert "identified by its port" in phyllod.ctl("explain", TWIN).stdout

    # The twin goes: the choice is under the serial again (and follows it anywhere).
    phyllod.tb.unplug("1-4")
    assert poll(lambda: phyllod.show(ORIGINAL)["SerialDoubt"] == "")
    assert _where(phyllod, ORIGINAL) == ("failed", "test")
    assert phyllod.show(ORIGINAL)["Identity"] == BY_SERIAL
    assert _stored(phyllod) == {BY_SERIAL: "test"}

    # The twin comes again, and leaves while phyllod is stopped: after the
    # restart the original, alone, has its choice back under its serial.
    _dongle(phyllod, "1-4", 8)
    assert poll(lambda: phyllod.show(ORIGINAL)["SerialDoubt"])
    phyllod.stop()
    phyllod.tb.unplug("1-4")
    phyllod.start()
    assert poll(lambda: _where(phyllod, ORIGINAL) == ("failed", "test")), \
        phyllod.show(ORIGINAL)
    assert phyllod.show(ORIGINAL)["Identity"] == BY_SERIAL
    assert _stored(phyllod) == {BY_SERIAL: "test"}

def test_twins_present_at_start_keep_the_choice_held_at_the_original_port(phyllod: Phyllod):
    """A choice the last run held at a port is that device's after a restart, and
    still not the twin's, who now sits alone in another port."""
    _dongle(phyllod, "1-3", 6)
    _dongle(phyllod, "1-4", 7)
    phyllod.start()
    assert phyllod.ctl("attach", ORIGINAL, "test").returncode == 1
    assert _where(phyllod, TWIN) == ("host", "")
    assert _stored(phyllod) == {f"{BY_SERIAL}@1-3": "test"}
    phyllod.stop()

    phyllod.start()
    assert _where(phyllod, TWIN) == ("host", "")
    assert poll(lambda: _where(phyllod, ORIGINAL) == ("failed", "test"))
    phyllod.stop()
    # The original left while phyllod was stopped: the twin, alone now, is
    # identified by the serial and gets nothing held at the original's port.
    phyllod.tb.unplug("1-3")
    phyllod.start()
    assert _where(phyllod, TWIN) == ("host", "")
    assert phyllod.show(TWIN)["Identity"] == BY_SERIAL
    assert _stored(phyllod) == {f"{BY_SERIAL}@1-3": "test"}


def test_a_remembered_answer_is_not_the_twins(phyllod: Phyllod):
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK)
    phyllod.start()
    _dongle(phyllod, "1-3", 6)
    (request,) = poll(lambda: json.loads(phyllod.ctl("--json", "requests").stdout))
    r = phyllod.ctl("answer", str(request["Id"]), "test", "--remember")
    assert r.returncode == 1 and "not supported" in r.stderr, r.stderr
    assert _stored(phyllod, "answers.json") == {BY_SERIAL: "test"}

    _dongle(phyllod, "1-4", 7)
    # The twin is asked about: the original's remembered answer is not for it.
    requests = poll(lambda: json.loads(phyllod.ctl("--json", "requests").stdout))
    assert [q["DeviceId"] for q in requests] == [TWIN]
    assert phyllod.show(TWIN)["State"] == "asking"
    assert _where(phyllod, ORIGINAL) == ("failed", "test")
    assert phyllod.show(ORIGINAL)["RememberedGuest"] == "test"
    assert _stored(phyllod, "answers.json") == {f"{BY_SERIAL}@1-3": "test"}


def test_a_placeholder_serial_keeps_the_choice_under_the_port(phyllod: Phyllod):
    _dongle(phyllod, "1-3", 6, serial="0123456789ABCDEF")
    phyllod.start()
    shown = phyllod.show(ORIGINAL)
    assert (shown["Identity"], shown["SerialDoubt"]) == (
        ORIGINAL, "serial 0123456789ABCDEF is a placeholder")
    assert phyllod.ctl("attach", ORIGINAL, "test").returncode == 1
    assert _stored(phyllod) == {ORIGINAL: "test"}
    # Another unit with the same placeholder, elsewhere: nothing of the first's.
    _dongle(phyllod, "1-4", 7, serial="0123456789ABCDEF")
    assert poll(lambda: phyllod.show(TWIN)["Identity"] == TWIN)
    assert _where(phyllod, TWIN) == ("host", "")
    assert _where(phyllod, ORIGINAL) == ("failed", "test")
    assert _stored(phyllod) == {ORIGINAL: "test"}
