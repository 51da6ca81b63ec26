"""Non-ASCII strings reach the bus well-formed, whatever the dbus-fast release."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from dbus_fast import Message, Variant
from dbus_fast._private.unmarshaller import Unmarshaller

from phyllod.bus.strings import MISCOUNTS, ascii_message

BODY = [{"Name": Variant("s", "Müller \ufffd keyboard")}, ["é", "plain"]]


def _round_trip(msg: Message) -> list:
    message = Unmarshaller(io.BytesIO(bytes(msg._marshall(False)))).unmarshall()
    assert message is not None
    return message.body


def test_messages_are_sent_readable():
    msg = Message(destination="a.b", path="/a", interface="a.b", member="M",
                  signature="a{sv}as", body=BODY, serial=7)
    sent = ascii_message(msg) if MISCOUNTS else msg
    body = _round_trip(sent)
    if MISCOUNTS:
        assert body == [{"Name": Variant("s", "M\\xfcller \\ufffd keyboard")},
                        ["\\xe9", "plain"]]
    else:
        assert body == BODY
    assert ascii_message(Message(destination="a.b", path="/a", interface="a.b", member="M",
                                 signature="s", body=["ascii"], serial=8)).body == ["ascii"]


_SYSTEM_CHECK = """
import io, sys
sys.path.insert(0, ROOT)
from dbus_fast import Message, Variant
from dbus_fast._private.unmarshaller import Unmarshaller
from phyllod.bus.strings import MISCOUNTS, ascii_message
msg = Message(destination="a.b", path="/a", interface="a.b", member="M", signature="as",
              body=[["M\u00fcller", "\ufffd"]], serial=3)
sent = ascii_message(msg) if MISCOUNTS else msg
body = Unmarshaller(io.BytesIO(bytes(sent._marshall(False)))).unmarshall().body
print(MISCOUNTS, body)
"""


def test_with_the_distributions_dbus_fast():
    """Debian 12's python3-dbus-fast (1.84) miscounts; the fix makes its messages valid."""
    system = Path("/usr/bin/python3")
    if not system.exists() or subprocess.run([system, "-c", "import dbus_fast"]).returncode:
        pytest.skip("no system python3 with dbus_fast")
    root = str(Path(__file__).resolve().parents[3])
    r = subprocess.run([system, "-c", _SYSTEM_CHECK.replace("ROOT", repr(root))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    miscounts, _, body = r.stdout.strip().partition(" ")
    expected = "[['M\\\\xfcller', '\\\\ufffd']]" if miscounts == "True" \
        else "[['Müller', '\ufffd']]"
    assert body == expected, (miscounts, body)
    print(f"system dbus-fast miscounts: {miscounts}", file=sys.stderr)
