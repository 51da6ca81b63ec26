"""Messages with combined flags are read, whatever the dbus-fast release."""

from __future__ import annotations

import io

import gi

gi.require_version("Gio", "2.0")
from dbus_fast._private.unmarshaller import Unmarshaller  # noqa: E402
from dbus_fast.constants import MessageFlag  # noqa: E402
from gi.repository import Gio, GLib  # noqa: E402

import phyllod.bus.service  # noqa: E402, F401  (applies phyllod.bus.compat)


def test_a_gdbus_call_with_no_auto_start_and_interactive_authorization_is_read():
    """GDBus (the applet) sends flags 6; dbus-fast 1.84 dropped the connection on it."""
    m = Gio.DBusMessage.new_method_call("me.phyllo.Phyllod1", "/me/phyllo/Phyllod1/requests/1",
                                        "me.phyllo.Phyllod1.Request", "Answer")
    m.set_body(GLib.Variant("(sb)", ("l2", False)))
    m.set_serial(5)
    for flags in range(8):
        blob = bytearray(m.to_blob(Gio.DBusCapabilityFlags.NONE))
        blob[2] = flags  # the flag byte of the fixed header
        message = Unmarshaller(io.BytesIO(bytes(blob))).unmarshall()
        assert message is not None and message.flags == MessageFlag(flags)
        assert message.body == ["l2", False]


def test_also_with_the_distributions_dbus_fast():
    """The packages run on Debian's python3-dbus-fast (1.84 in Debian 12), the venv on PyPI's."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    system = Path("/usr/bin/python3")
    probe = "import dbus_fast, gi"
    if sys.executable == str(system) or not system.exists() or subprocess.run(
            [system, "-c", probe], capture_output=True).returncode != 0:
        pytest.skip("no system python3 with python3-dbus-fast and python3-gi")
    here = Path(__file__)
    code = (f"exec(open({str(here)!r}).read().split('def test_also')[0]); "
            "test_a_gdbus_call_with_no_auto_start_and_interactive_authorization_is_read()")
    done = subprocess.run([system, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(here.parents[3]), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
