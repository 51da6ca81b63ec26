"""The D-Bus API as clients see it: a private system bus with the shipped policy file.

The daemon runs as a subprocess (see phyllod_on_bus). Clients are real:
``busctl``, as root and as ``nobody``, and dbus-fast for signals.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import private_bus
import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from phyllod_on_bus import DEVICE, MANAGER, NAME, ROOT, Phyllod

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KBD = "/me/phyllo/Phyllod1/devices/usb_1_2"
ATTACH = "me.phyllo.phyllod.attach"
RELOAD = "me.phyllo.phyllod.reload"
ANSWER = "me.phyllo.phyllod.answer"
DETACH = "me.phyllo.phyllod.detach"
#: Every mutating method, with arguments: (member, signature, *args).
MUTATING = [("Attach", "ss", "usb:1-2", "test"), ("Detach", "s", "usb:1-2"),
            ("ClearOverride", "s", "usb:1-2"), ("Reload", ""), ("Forget", "s", "usb:1-2")]
DEVICE_MUTATING = [("Attach", "s", "test"), ("Detach", ""), ("ClearOverride", "")]
DENY_KBD = '[[rule]]\nname = "no keyboards"\nmatch = { vendor = "0627" }\naction = "deny"\n'


def _error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, f"call succeeded: {r.stdout}"
    return r.stderr.strip()


def _canonical(interface: ET.Element) -> list[tuple]:
    """An interface as a sorted list of members with their argument types and access."""
    members = []
    for el in interface:
        args = tuple((a.get("direction", "in" if el.tag == "method" else "out"), a.get("type"))
                     for a in el.findall("arg"))
        members.append((el.tag, el.get("name"), el.get("type"), el.get("access"), args))
    return sorted(members, key=repr)


def test_objects_and_introspection_match_the_shipped_xml(phyllod: Phyllod):
    phyllod.start()
    tree = phyllod.busctl("tree", "--list", NAME)
    assert KBD in tree.stdout.split()
    guests = [p for p in tree.stdout.split() if p.startswith(f"{ROOT}/guests/")]
    assert len(guests) == 1  # the test driver's guest "test"
    for path, interface in ((ROOT, MANAGER), (KBD, DEVICE),
                            (guests[0], "me.phyllo.Phyllod1.Guest")):
        r = phyllod.busctl("introspect", "--xml-interface", NAME, path)
        live = ET.fromstring(r.stdout).find(f"interface[@name='{interface}']")
        shipped = ET.parse(REPO / "dbus" / f"{interface}.xml").getroot().find("interface")
        assert live is not None and shipped is not None
        assert _canonical(live) == _canonical(shipped), interface
    assert phyllod.prop(guests[0], "Name", "me.phyllo.Phyllod1.Guest") == "test"
    assert phyllod.prop(KBD, "State") == "host"
    assert phyllod.prop(ROOT, "PolicyStatus", MANAGER) == "ok"


def test_without_polkit_only_root_may_change_anything(phyllod: Phyllod):
    phyllod.start()
    for member, sig, *args in MUTATING:
        err = _error(phyllod.call(member, sig, *args, nobody=True))
        assert "polkit is not running, so only root may change anything" in err, member
    for member, sig, *args in DEVICE_MUTATING:
        err = _error(phyllod.call(member, sig, *args, path=KBD, interface=DEVICE, nobody=True))
        assert "only root" in err, member
    # Nothing changed; reading is open to nobody.
    assert phyllod.prop(KBD, "Override") == ""
    assert not phyllod.state_dir.exists()
    r = phyllod.call("Explain", "s", "0627:0001", nobody=True)
    assert r.returncode == 0 and "state: host" in r.stdout
    r = phyllod.busctl("call", NAME, ROOT, "org.freedesktop.DBus.ObjectManager",
                       "GetManagedObjects", nobody=True)
    assert r.returncode == 0 and KBD in r.stdout
    # Root may.
    assert phyllod.call("Detach", "s", "usb:1-2").returncode == 0
    assert phyllod.prop(KBD, "Override") == "host"


def test_polkit_decides_for_every_caller(phyllod: Phyllod, mock_polkit: private_bus.MockPolkit):
    phyllod.start()
    err = _error(phyllod.call("Detach", "s", "usb:1-2", nobody=True))
    assert "me.phyllo.Phyllod1.Error.NotAuthorized" in err or "polkit denied" in err
    assert phyllod.prop(KBD, "Override") == ""
    mock_polkit.set_allowed([DETACH])
    assert phyllod.call("Detach", "", path=KBD, interface=DEVICE, nobody=True).returncode == 0
    assert phyllod.prop(KBD, "Override") == "host"
    err = _error(phyllod.call("Attach", "ss", "usb:1-2", "test", nobody=True))
    assert "polkit denied me.phyllo.phyllod.attach" in err
    err = _error(phyllod.call("Reload", nobody=True))
    assert "polkit denied me.phyllo.phyllod.reload" in err
    mock_polkit.set_allowed([DETACH, RELOAD])
    assert phyllod.call("Reload", nobody=True).returncode == 0
    # The check named the device and the guest (for the prompt and for rules).
    log = mock_polkit.log()
    assert "device_description" in log and "0627:0001 QEMU QEMU USB Keyboard" in log, log
    # Root too is asked about (the mock, unlike polkitd, may refuse uid 0).
    mock_polkit.set_allowed([])
    err = _error(phyllod.call("ClearOverride", "s", "usb:1-2"))
    assert "polkit denied me.phyllo.phyllod.attach" in err
    assert phyllod.prop(KBD, "Override") == "host"


def test_manual_overrides_outlive_restart_and_replug(phyllod: Phyllod):
    phyllod.start()
    assert "no guest named 'nosuch'" in _error(phyllod.call("Attach", "ss", "usb:1-2", "nosuch"))
    assert "no present device" in _error(phyllod.call("Attach", "ss", "dead:beef", "test"))
    # The test driver cannot attach: libvirt's refusal comes back as Error.Failed,
    # and the override stays (phyllod keeps retrying with backoff).
    err = _error(phyllod.call("Attach", "ss", "0627:0001", "test"))
    assert "not supported by the connection driver" in err
    assert phyllod.prop(KBD, "Override") == "attach"
    assert phyllod.prop(KBD, "OverrideGuest") == "test"
    assert phyllod.prop(KBD, "State") == "failed"
    assert phyllod.call("Detach", "s", KBD).returncode == 0
    assert (phyllod.prop(KBD, "State"), phyllod.prop(KBD, "Override")) == ("host", "host")
    saved = json.loads((phyllod.state_dir / "overrides.json").read_text())
    assert saved["overrides"][0]["identity"] == "usb:1-2"

    phyllod.stop()
    phyllod.start()
    assert phyllod.prop(KBD, "Override") == "host"
    assert "kept on the host by a manual override" in phyllod.prop(KBD, "Reason")
    assert phyllod.proc is not None
    mark = phyllod.proc.mark()
    phyllod.tb.unplug("1-2")
    phyllod.proc.wait_log(r"usb:1-2 .* unplugged", start=mark)
    phyllod.tb.plug("1-2", devnum=9)
    phyllod.proc.wait_log(r"usb:1-2 .* plugged in", start=mark)
    assert phyllod.prop(KBD, "Override") == "host"
    assert phyllod.call("ClearOverride", "s", "usb:1-2").returncode == 0
    assert phyllod.prop(KBD, "Override") == ""
    assert json.loads((phyllod.state_dir / "overrides.json").read_text())["overrides"] == []


def test_deny_wins_over_manual_attach(phyllod: Phyllod):
    (phyllod.policy_dir / "10-deny.toml").write_text(DENY_KBD)
    phyllod.start()
    err = _error(phyllod.call("Attach", "s", "test", path=KBD, interface=DEVICE))
    assert "me.phyllo.Phyllod1.Error.Denied" in err or "denied by rule 'no keyboards'" in err
    assert phyllod.prop(KBD, "Override") == ""
    assert phyllod.prop(KBD, "State") == "denied"


def test_reload_refuses_a_broken_policy_with_file_and_line(phyllod: Phyllod):
    phyllod.start()
    bad = phyllod.policy_dir / "20-bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nmatch = { colour = "red" }\nguest = "test"\n')
    err = _error(phyllod.call("Reload"))
    assert f"{bad}:3" in err
    assert phyllod.prop(ROOT, "PolicyStatus", MANAGER) == "error"
    assert "colour" in str(phyllod.prop(ROOT, "PolicyError", MANAGER))
    bad.write_text(DENY_KBD)
    assert phyllod.call("Reload").returncode == 0
    assert phyllod.prop(ROOT, "PolicyStatus", MANAGER) == "ok"
    assert phyllod.prop(KBD, "State") == "denied"


def test_bad_calls_get_errors_and_the_daemon_lives(phyllod: Phyllod):
    phyllod.start()
    assert "could not be found" in _error(phyllod.call("Detach", "i", "3"))
    assert "could not be found" in _error(phyllod.call("Attach", "s", "usb:1-2"))
    r = phyllod.call("Detach", "", path=f"{ROOT}/devices/usb_9_9", interface=DEVICE)
    assert r.returncode != 0
    err = _error(phyllod.call("Explain", "s", "x" * 70000))
    assert "InvalidArgs" in err or "an argument has 70000 characters (at most 4096)" in err
    assert "no present device is named 'xxxx" in _error(phyllod.call("Explain", "s", "x" * 4000))
    assert len(_error(phyllod.call("GetDevice", "s", "\x01" * 4000))) < 400
    err = _error(phyllod.call("GetDevice", "s", "0000:0000"))
    assert "no present device is named '0000:0000'" in err
    assert phyllod.proc is not None and phyllod.proc.alive
    assert phyllod.call("GetDevice", "s", "usb:1-2").stdout.strip() == f'o "{KBD}"'
    phyllod.tb.plug("1-3", devnum=6)  # a second keyboard with the same ids
    phyllod.proc.wait_log(r"usb:1-3 .* plugged in")
    err = _error(phyllod.call("GetDevice", "s", "0627:0001"))
    assert "0627:0001 matches 2 devices (usb:1-2, usb:1-3); name one by its id" in err


async def _collect(address: str, action: Callable[[], None], until: Callable[[list], bool],
                   timeout: float = 15.0) -> list[Message]:
    """Signals phyllod sends under its root while ``action`` runs, until ``until`` holds."""
    bus = await MessageBus(bus_address=address).connect()
    seen: list[Message] = []
    done = asyncio.Event()

    def handler(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.path and msg.path.startswith(ROOT):
            seen.append(msg)
            if until(seen):
                done.set()

    bus.add_message_handler(handler)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=[f"type='signal',sender='{NAME}',path_namespace='{ROOT}'"]))
    await asyncio.get_running_loop().run_in_executor(None, action)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        bus.disconnect()
    return seen


async def test_signals_tell_clients_everything(phyllod: Phyllod):
    phyllod.start()
    usb13 = f"{ROOT}/devices/usb_1_3"

    def members(seen: list[Message]) -> list[str]:
        return [m.member for m in seen]

    seen = await _collect(phyllod.bus.address, lambda: phyllod.tb.plug("1-3", devnum=6),
                          lambda s: "InterfacesAdded" in members(s))
    added = next(m for m in seen if m.member == "InterfacesAdded")
    assert added.path == ROOT  # from the ObjectManager, as the specification says
    path, interfaces = added.body
    assert path == usb13
    assert interfaces[DEVICE]["Id"].value == "usb:1-3"
    assert interfaces[DEVICE]["State"].value == "host"

    seen = await _collect(phyllod.bus.address, lambda: phyllod.call("Detach", "s", "usb:1-3"),
                          lambda s: "PropertiesChanged" in members(s))
    changed = next(m for m in seen if m.member == "PropertiesChanged")
    assert changed.path == usb13
    assert changed.body[1]["Override"].value == "host"

    seen = await _collect(phyllod.bus.address, lambda: phyllod.tb.unplug("1-3"),
                          lambda s: "InterfacesRemoved" in members(s))
    removed = next(m for m in seen if m.member == "InterfacesRemoved")
    assert removed.path == ROOT
    assert removed.body == [usb13, [DEVICE]]


def test_real_polkitd_with_the_shipped_actions(phyllod: Phyllod,
                                               real_polkit: private_bus.RealPolkit):
    phyllod.start()
    actions = {"Reload": RELOAD, "Forget": ANSWER, "Detach": DETACH}
    for member, sig, *args in MUTATING:
        err = _error(phyllod.call(member, sig, *args, nobody=True))
        assert f"polkit denied {actions.get(member, ATTACH)}" in err, member
    for member, sig, *args in DEVICE_MUTATING:
        err = _error(phyllod.call(member, sig, *args, path=KBD, interface=DEVICE, nobody=True))
        assert f"polkit denied {actions.get(member, ATTACH)}" in err, member
    assert phyllod.prop(KBD, "Override") == ""
    assert not phyllod.state_dir.exists()
    # polkit authorizes root for every action it knows.
    assert phyllod.call("Detach", "s", "usb:1-2").returncode == 0
    assert phyllod.prop(KBD, "Override") == "host"
    assert "Error substituting" not in real_polkit.log()
