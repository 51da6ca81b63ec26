"""The bus's last line of defence, as tables: what a call may carry, what a reply may say,
and which values fit the D-Bus type they are published as."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast._private.unmarshaller import Unmarshaller

from phyllod.bus.strings import (
    MAX_ARGUMENT,
    MAX_VALUES,
    MISCOUNTS,
    PremarshalledReply,
    ascii_message,
    fit,
    marshal_body,
    oversized,
)
from phyllod.core.bounds import MAX_TEXT, bounded, excerpt

BIG = "x" * (MAX_ARGUMENT + 1)


@pytest.mark.parametrize(("path", "body", "why"), [
    ("/me/phyllo/Phyllod1", ["usb:1-2", "work"], ""),
    ("/me/phyllo/Phyllod1", ["x" * MAX_ARGUMENT], ""),
    ("/me/phyllo/Phyllod1", ["usb:1-2", True], ""),
    (None, [], ""),
    ("/me/phyllo/Phyllod1", [BIG], "an argument has 4097 characters (at most 4096)"),
    ("/me/phyllo/Phyllod1", ["ok", BIG], "an argument has 4097"),
    ("/" + "p" * MAX_ARGUMENT, [], "the object path has 4097 characters (at most 4096)"),
    ("/a", [b"\x00" * (MAX_ARGUMENT + 1)], "an argument has 4097"),
    ("/a", [Variant("s", BIG)], "an argument has 4097"),
    ("/a", [Variant("v", Variant("as", [BIG]))], "an argument has 4097"),
    ("/a", [{"k": BIG}], "an argument has 4097"),
    ("/a", [{BIG: "v"}], "an argument has 4097"),
    ("/a", [[["deep", [BIG]]]], "an argument has 4097"),
    ("/a", [["s"] * (MAX_VALUES + 1)], "more than 64 values"),
    ("/a", [dict.fromkeys(range(MAX_VALUES + 1), 0)], "more than 64 values"),
    ("/a", [[1] * 40, [2] * 40], "more than 64 values"),
    ("/a", [list(range(1_000_000))], "more than 64 values"),
])
def test_calls_over_a_bound_are_named(path, body, why):
    assert why in oversized(path, body) if why else oversized(path, body) == ""


@pytest.mark.parametrize(("value", "shown"), [
    ("usb:9-9", "'usb:9-9'"),
    ("", "''"),
    ("\x1b[2J", "'\\x1b[2J'"),
    ("\u202eevil", "'\\u202eevil'"),
    ("a\nb", "'a\\nb'"),
    ("x" * 70_000, "'" + "x" * 64 + "'… (70000 characters)"),
])
def test_an_error_quotes_an_argument_escaped_and_never_whole(value, shown):
    assert excerpt(value) == shown


def test_an_excerpt_is_short_whatever_the_argument():
    for char in ("x", "\x01", "\U000e0001", "é"):
        assert len(excerpt(char * 1_000_000)) <= 700


def test_texts_sent_are_bounded_and_say_so():
    assert bounded("short") == "short"
    assert bounded("x" * MAX_TEXT) == "x" * MAX_TEXT
    cut = bounded("x" * 100_000)
    assert len(cut) <= MAX_TEXT
    kept = cut.index("…")
    assert cut.endswith(f"… ({100_000 - kept} more characters not shown; the journal has them)")
    assert len(bounded("y" * 1000, 100)) <= 100


@pytest.mark.parametrize(("signature", "value", "fitted"), [
    ("u", 0, 0), ("u", 2**32 - 1, 2**32 - 1), ("u", 2**32, None), ("u", -1, None),
    ("u", 2**40, None), ("u", True, None), ("u", "5", None),
    ("i", -1, -1), ("i", 2**31, None), ("i", -(2**31), -(2**31)), ("i", -(2**31) - 1, None),
    ("t", 2**64 - 1, 2**64 - 1), ("t", 2**64, None),
    ("b", True, True), ("b", 1, None),
    ("s", "text", "text"), ("s", None, None), ("s", 5, None),
    ("o", "/a/b", "/a/b"),
    ("as", ["03", "e0"], ["03", "e0"]), ("as", ("a",), ["a"]), ("as", [1], None),
    ("a{ss}", {"k": "v"}, {"k": "v"}), ("a{ss}", {"k": 1}, None),
    ("ao", ["/a"], ["/a"]),
])
def test_values_fit_their_dbus_type_or_are_refused(signature, value, fitted):
    assert fit(signature, value) == fitted


def test_published_text_is_bounded():
    assert len(fit("s", "z" * 100_000)) <= MAX_TEXT
    assert all(len(v) <= MAX_TEXT for v in fit("as", ["z" * 100_000]))


OBJECTS = {"/me/phyllo/Phyllod1/devices/usb_1_2": {"me.phyllo.Phyllod1.Device": {
    "Id": Variant("s", "usb:1-2"), "Name": Variant("s", "Müller \ufffd"),
    "Bus": Variant("u", 3), "InterfaceClasses": Variant("as", ["03", "e0"])}}}
SIGNATURE = "a{oa{sa{sv}}}"

#: Run by the distribution's python3 (dbus-fast 1.84): the same comparison there.
_SYSTEM_CHECK = """
import sys
sys.path.insert(0, ROOT)
from dbus_fast import Message, MessageType, Variant
from phyllod.bus.strings import PremarshalledReply, ascii_message, marshal_body
body = {"/a": {"i.f": {"Name": Variant("s", "M\\u00fcller"), "Bus": Variant("u", 3)}}}
ready = PremarshalledReply(9, ":1.5", "a{oa{sa{sv}}}", marshal_body("a{oa{sa{sv}}}", body), {})
ready.serial = 4
plain = Message(message_type=MessageType.METHOD_RETURN, reply_serial=9, destination=":1.5",
                signature="a{oa{sa{sv}}}", body=[body], serial=4)
print(bytes(ready._marshall(False)) == bytes(ascii_message(plain)._marshall(False)))
"""


def test_a_premarshalled_reply_is_the_message_dbus_fast_would_send():
    ready = PremarshalledReply(9, ":1.5", SIGNATURE, marshal_body(SIGNATURE, OBJECTS), {})
    ready.serial = 4
    plain = Message(message_type=MessageType.METHOD_RETURN, reply_serial=9,
                    destination=":1.5", signature=SIGNATURE, body=[OBJECTS], serial=4)
    expected = ascii_message(plain) if MISCOUNTS else plain
    assert bytes(ready._marshall(False)) == bytes(expected._marshall(False))
    read = Unmarshaller(io.BytesIO(bytes(ready._marshall(False)))).unmarshall()
    assert read is not None and read.reply_serial == 9 and read.body == expected.body
    assert ascii_message(ready) is ready  # the writer's guard leaves it as it is
    system = Path("/usr/bin/python3")
    if not system.exists() or subprocess.run([system, "-c", "import dbus_fast"]).returncode:
        pytest.skip("no system python3 with dbus_fast")
    root = str(Path(__file__).resolve().parents[3])
    r = subprocess.run([system, "-c", _SYSTEM_CHECK.replace("ROOT", repr(root))],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stdout + r.stderr
