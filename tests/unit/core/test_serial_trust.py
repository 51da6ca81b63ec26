"""serial_trust as tables: which serials are identity, and where choices go when
a twin comes or goes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import pci, usb

from phyllod.core.explain import explain
from phyllod.core.model import Assignment, Override, OverrideKind, State
from phyllod.core.serial_trust import carry_choices, placeholder, with_identities


@pytest.mark.parametrize(("serial", "doubt"), [
    ("0123456789ABCDEF", "serial 0123456789ABCDEF is a placeholder"),
    ("0000000000", "serial 0000000000 is a placeholder"),
    ("000000000001", "serial 000000000001 is a placeholder"),
    ("FFFFFFFF", "serial FFFFFFFF is a placeholder"),
    ("AAAA-AAAA", "serial AAAA-AAAA is a placeholder"),
    ("Serial", "serial Serial is a placeholder"),
    ("N/A", "serial 'N/A' is too short to tell devices apart"),
    ("n/a ", "serial 'n/a ' is too short to tell devices apart"),
    ("Not Applicable", "serial Not Applicable is a placeholder"),
    ("To Be Filled By O.E.M.", "serial To Be Filled By O.E.M. is a placeholder"),
    ("12345678", "serial 12345678 is a placeholder"),
    ("1", "serial '1' is too short to tell devices apart"),
    ("A1", "serial 'A1' is too short to tell devices apart"),
    ("\ufffd\ufffd\ufffd\ufffd", "serial \ufffd\ufffd\ufffd\ufffd is a placeholder"),
    # Seen on real devices (tests/data/devices/SOURCES.md): Realtek's Bluetooth
    # chips all say 00e04c000001, Marvell/ASR modems 200806006809080000.
    ("00e04c000001", "serial 00e04c000001 is a placeholder"),
    ("00E04C00000A", "serial 00E04C00000A is a placeholder"),
    ("200806006809080000", "serial 200806006809080000 is a placeholder"),
    # Keys typed in order, plain or doubled, up or down.
    ("001122334455", "serial 001122334455 is a placeholder"),
    ("AABBCCDDEEFF", "serial AABBCCDDEEFF is a placeholder"),
    ("123456789ABC", "serial 123456789ABC is a placeholder"),
    ("fedcba98", "serial fedcba98 is a placeholder"),
    ("89abcdef0123", "serial 89abcdef0123 is a placeholder"),
    # Real, unique-looking serials.
    ("00E04C239987", ""),  # the same prefix with a programmed address
    ("74E54354F609", ""),  # a Broadcom module's Bluetooth address
    ("b950269c", ""),
    ("12345", ""),  # too short a run to be a pattern (and no known one)
    ("001122", ""),
    ("0011223344556", ""),
    ("0002A4C7", ""),
    ("5B8F2F6E3C", ""),
    ("00000000001A", ""),  # zeros, then more than a small counter
    ("HXD2N0XJ", ""),
    ("3.2", "serial '3.2' is too short to tell devices apart"),
])
def test_placeholders(serial, doubt):
    assert placeholder(serial) == doubt


def _present(*devices):
    return with_identities({d.id: d for d in devices})


A = usb(port="1-2", vendor="0a12", product="0001", serial="5B8F2F6E3C")
TWIN = usb(port="1-3", vendor="0a12", product="0001", serial="5B8F2F6E3C")
OTHER_KIND = usb(port="1-4", vendor="0bda", product="8771", serial="5B8F2F6E3C")
PLACEHOLDER = usb(port="1-5", vendor="0a12", product="0001", serial="0123456789ABCDEF")
NO_SERIAL = usb(port="1-6")


@pytest.mark.parametrize(("present", "identity", "doubt"), [
    ((A,), {"usb:1-2": "usb:0a12:0001:5B8F2F6E3C"}, {"usb:1-2": ""}),
    ((A, TWIN), {"usb:1-2": "usb:0a12:0001:5B8F2F6E3C@1-2",
                 "usb:1-3": "usb:0a12:0001:5B8F2F6E3C@1-3"},
     {"usb:1-2": "serial 5B8F2F6E3C is shared with usb:1-3",
      "usb:1-3": "serial 5B8F2F6E3C is shared with usb:1-2"}),
    # The same serial on another vendor:product is no twin.
    ((A, OTHER_KIND), {"usb:1-2": "usb:0a12:0001:5B8F2F6E3C",
                       "usb:1-4": "usb:0bda:8771:5B8F2F6E3C"}, {"usb:1-2": "", "usb:1-4": ""}),
    ((PLACEHOLDER,), {"usb:1-5": "usb:1-5"},
     {"usb:1-5": "serial 0123456789ABCDEF is a placeholder"}),
    # Twins with a placeholder are known by the port alone, as without a serial.
    ((PLACEHOLDER, replace(PLACEHOLDER, port="1-7", sys_path="/x/1-7")),
     {"usb:1-5": "usb:1-5", "usb:1-7": "usb:1-7"},
     {"usb:1-5": "serial 0123456789ABCDEF is a placeholder",
      "usb:1-7": "serial 0123456789ABCDEF is a placeholder"}),
    ((NO_SERIAL,), {"usb:1-6": "usb:1-6"}, {"usb:1-6": ""}),
    ((pci(),), {"pci:0000:03:00.0": "pci:0000:03:00.0"}, {"pci:0000:03:00.0": ""}),
])
def test_identity_over_the_present_set(present, identity, doubt):
    judged = _present(*present)
    assert {k: d.identity for k, d in judged.items()} == identity
    assert {k: d.serial_doubt for k, d in judged.items()} == doubt


def test_many_twins_are_named_briefly():
    twins = [usb(port=f"1-{n}", vendor="0a12", product="0001", serial="5B8F2F6E3C")
             for n in range(1, 8)]
    judged = _present(*twins)
    assert judged["usb:1-1"].serial_doubt == (
        "serial 5B8F2F6E3C is shared with usb:1-2, usb:1-3, usb:1-4 and 3 more")


def test_judging_twice_changes_nothing():
    judged = _present(A, TWIN)
    assert with_identities(judged) == judged


WORK = Override(OverrideKind.ATTACH, "work")
SERIAL = "usb:0a12:0001:5B8F2F6E3C"
AT_A = f"{SERIAL}@1-2"


@pytest.mark.parametrize(("choices", "before", "after", "expected"), [
    # A twin plugged in beside the chosen device: the choice stays with the
    # device (now known by its port); the twin gets nothing.
    ({SERIAL: WORK}, (A,), (A, TWIN), {AT_A: WORK}),
    # The twin leaves: the choice goes back under the serial, and follows the
    # device to any port again.
    ({AT_A: WORK}, (A, TWIN), (A,), {SERIAL: WORK}),
    # ... also when it left while phyllod was stopped (nothing before).
    ({AT_A: WORK}, (), (A,), {SERIAL: WORK}),
    ({AT_A: "work"}, (), (A,), {SERIAL: "work"}),
    # The twin, alone in its own port, takes nothing held at the original's.
    ({AT_A: WORK}, (A, TWIN), (TWIN,), {AT_A: WORK}),
    ({AT_A: WORK}, (), (TWIN,), {AT_A: WORK}),
    # Both back at start: the held choice applies where it is, nothing moves.
    ({AT_A: WORK}, (), (A, TWIN), {AT_A: WORK}),
    # The original, alone again, has a choice of its own: the held one waits.
    ({AT_A: WORK, SERIAL: Override(OverrideKind.HOST)}, (), (A,),
     {AT_A: WORK, SERIAL: Override(OverrideKind.HOST)}),
    # A serial-less device later in the original's port is another device.
    ({AT_A: WORK}, (), (usb(port="1-2"),), {AT_A: WORK}),
    # Both present from the start: nobody knows which one it was made for.
    ({SERIAL: WORK}, (), (A, TWIN), {SERIAL: WORK}),
    # The chosen device leaves first, then a twin comes: indistinguishable, as
    # a serial number is (the choice applies to it, as it always did).
    ({SERIAL: WORK}, (A,), (), {SERIAL: WORK}),
    ({SERIAL: WORK}, (), (TWIN,), {SERIAL: WORK}),
    # The new identity already has its own choice: it is kept.
    ({SERIAL: WORK, AT_A: Override(OverrideKind.HOST)}, (A,), (A, TWIN),
     {SERIAL: WORK, AT_A: Override(OverrideKind.HOST)}),
    # Another device took the port while the chosen one was away: no carrying.
    ({SERIAL: WORK}, (A,), (usb(port="1-2", vendor="0a12", product="0001",
                                 serial="77AA11BB"), TWIN), {SERIAL: WORK}),
    # Devices with no choice, or whose identity did not change: nothing moves.
    ({}, (A,), (A, TWIN), {}),
    ({SERIAL: WORK}, (A,), (A, OTHER_KIND), {SERIAL: WORK}),
])
def test_choices_follow_their_device(choices, before, after, expected):
    assert carry_choices(choices, _present(*before), _present(*after)) == expected


def test_a_third_twin_keeps_the_choice_with_the_first():
    third = usb(port="1-7", vendor="0a12", product="0001", serial="5B8F2F6E3C")
    step1 = carry_choices({SERIAL: WORK}, _present(A), _present(A, TWIN))
    step2 = carry_choices(step1, _present(A, TWIN), _present(A, TWIN, third))
    assert step2 == {AT_A: WORK}
    # The twins leave one by one: back under the serial only once A is alone.
    step3 = carry_choices(step2, _present(A, TWIN, third), _present(A, third))
    assert step3 == {AT_A: WORK}
    assert carry_choices(step3, _present(A, third), _present(A)) == {SERIAL: WORK}


@pytest.mark.parametrize(("present", "line"), [
    ((A,), "identity: usb:0a12:0001:5B8F2F6E3C (its serial number: choices follow it to "
           "any port)"),
    ((A, TWIN), "identity: usb:0a12:0001:5B8F2F6E3C@1-2 (serial 5B8F2F6E3C is shared with "
                "usb:1-3; identified by its port)"),
    ((replace(PLACEHOLDER, port="1-2", sys_path="/x/1-2"),),
     "identity: usb:1-2 (serial 0123456789ABCDEF is a placeholder; identified by its port)"),
    ((usb(port="1-2"),), "identity: usb:1-2 (it reports no serial number; identified by its "
                         "port)"),
])
def test_explain_says_what_identifies_the_device(present, line):
    d = _present(*present)["usb:1-2"]
    text = explain(d, Assignment(device_id=d.id, state=State.HOST, reason="no rule matches"), None)
    assert line in text.splitlines()


def test_explain_and_describe_use_the_hardware_database_names():
    nic = replace(pci(), vendor_db="Intel Corporation", model_db="Wi-Fi 6 AX200")
    assert nic.describe() == "pci:0000:03:00.0 (8086:2723 Intel Corporation Wi-Fi 6 AX200)"
    text = explain(nic, Assignment(device_id=nic.id, state=State.HOST), None).splitlines()
    assert text[1] == "identity: pci:0000:03:00.0 (its PCI address)"
    own = replace(usb(), manufacturer="Logitech", product_name="USB Receiver",
                  vendor_db="Logitech, Inc.", model_db="Unifying Receiver")
    assert own.describe() == "usb:1-2 (0627:0001 Logitech USB Receiver)"
    assert "hardware database: Logitech, Inc. Unifying Receiver" in explain(
        own, Assignment(device_id=own.id, state=State.HOST), None).splitlines()
