"""The shipped D-Bus and polkit files, exercised on a private system bus.

A stand-in for phyllod, exported by this process as root, implements the
contract's method names and records the calls that reach it: a call the bus
lets through shows up there, a call the policy refuses fails with "Access
denied" and never arrives. Unprivileged calls are made by the real busctl
running as nobody.
"""

# No `from __future__ import annotations`: dbus-fast would read `-> None` as the
# D-Bus type "None" and refuse the stand-in's methods.
import asyncio
import configparser
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import private_bus
import pytest
from dbus_fast import BusType, Message, MessageType, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr
from dbus_fast.errors import DBusError
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property

from phyllod.bus import gate
from phyllod.contract import (
    POLKIT_ANSWER,
    POLKIT_ATTACH,
    POLKIT_ATTACH_PCI,
    POLKIT_DETACH,
    POLKIT_RELOAD,
)
from phyllod.core.model import Device, Subsystem

BUS_NAME = "me.phyllo.Phyllod1"
ROOT = "/me/phyllo/Phyllod1"
DEVICE = f"{ROOT}/devices/usb_1_2"
MANAGER_IFACE = "me.phyllo.Phyllod1.Manager"
DEVICE_IFACE = "me.phyllo.Phyllod1.Device"
SECRET_IFACE = "me.phyllo.Phyllod1.Secret"
DBUS_DIR = private_bus.REPO / "dbus"

Calls = list[tuple[str, str, tuple[str, ...]]]


class FakeManager(ServiceInterface):
    """The Manager's methods by the contract's names; Frobnicate is one the contract lacks."""

    def __init__(self, calls: Calls) -> None:
        super().__init__(MANAGER_IFACE)
        self.calls = calls

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return "0-test"

    @dbus_method()
    def GetDevice(self, device: DBusStr) -> DBusObjectPath:
        self.calls.append((MANAGER_IFACE, "GetDevice", (device,)))
        return DEVICE

    @dbus_method()
    def Explain(self, device: DBusStr) -> DBusStr:
        self.calls.append((MANAGER_IFACE, "Explain", (device,)))
        return f"{device} stays on the host"

    @dbus_method()
    def Attach(self, device: DBusStr, guest: DBusStr) -> None:
        self.calls.append((MANAGER_IFACE, "Attach", (device, guest)))

    @dbus_method()
    def Detach(self, device: DBusStr) -> None:
        self.calls.append((MANAGER_IFACE, "Detach", (device,)))

    @dbus_method()
    def ClearOverride(self, device: DBusStr) -> None:
        self.calls.append((MANAGER_IFACE, "ClearOverride", (device,)))

    @dbus_method()
    def Reload(self) -> None:
        self.calls.append((MANAGER_IFACE, "Reload", ()))

    @dbus_method()
    def Frobnicate(self) -> None:
        self.calls.append((MANAGER_IFACE, "Frobnicate", ()))


class FakeDevice(ServiceInterface):
    """The Device's methods by the contract's names."""

    def __init__(self, calls: Calls) -> None:
        super().__init__(DEVICE_IFACE)
        self.calls = calls

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusStr:
        return "usb:1-2"

    @dbus_method()
    def Attach(self, guest: DBusStr) -> None:
        self.calls.append((DEVICE_IFACE, "Attach", (guest,)))

    @dbus_method()
    def Detach(self) -> None:
        self.calls.append((DEVICE_IFACE, "Detach", ()))

    @dbus_method()
    def ClearOverride(self) -> None:
        self.calls.append((DEVICE_IFACE, "ClearOverride", ()))


class FakeSecret(ServiceInterface):
    """An interface outside the contract, with a writable property: nobody must reach either."""

    def __init__(self, calls: Calls) -> None:
        super().__init__(SECRET_IFACE)
        self.calls = calls
        self.knob = "factory"

    @dbus_property()
    def Knob(self) -> DBusStr:
        return self.knob

    @Knob.setter
    def Knob(self, value: DBusStr) -> None:
        self.calls.append((SECRET_IFACE, "Set Knob", (value,)))
        self.knob = value

    @dbus_method()
    def Reveal(self) -> DBusStr:
        self.calls.append((SECRET_IFACE, "Reveal", ()))
        return "secret"


@pytest.fixture
async def calls(system_bus: private_bus.PrivateSystemBus) -> AsyncIterator[Calls]:
    """A phyllod stand-in owning the name as root; yields the calls that reach it."""
    bus = await MessageBus(bus_address=system_bus.address, bus_type=BusType.SYSTEM).connect()
    received: Calls = []
    bus.export(ROOT, FakeManager(received))
    bus.export(ROOT, FakeSecret(received))
    bus.export(DEVICE, FakeDevice(received))
    try:
        assert await bus.request_name(BUS_NAME) is RequestNameReply.PRIMARY_OWNER
        yield received
    finally:
        bus.disconnect()


async def busctl_as_nobody(bus: private_bus.PrivateSystemBus,
                           *args: str) -> subprocess.CompletedProcess[str]:
    """busctl on the private bus as nobody, off the event loop that serves the stand-in."""
    argv = ["busctl", f"--address={bus.address}", "--timeout=10", *args]
    return await asyncio.to_thread(private_bus.run_as_nobody, argv, bus.env())


async def test_root_owns_the_name(system_bus: private_bus.PrivateSystemBus,
                                  calls: Calls) -> None:
    result = await busctl_as_nobody(
        system_bus, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
        "org.freedesktop.DBus", "GetConnectionUnixUser", "s", BUS_NAME)
    assert (result.returncode, result.stdout) == (0, "u 0\n"), result.stderr


async def test_nobody_cannot_own_the_name(
        system_bus: private_bus.PrivateSystemBus) -> None:
    result = await busctl_as_nobody(
        system_bus, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
        "org.freedesktop.DBus", "RequestName", "su", BUS_NAME, "0")
    assert result.returncode != 0
    assert "Access denied" in result.stderr
    # The control: the same call by root succeeds (so the refusal is the policy's).
    assert system_bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus", "RequestName", "su", BUS_NAME, "0") == "u 1"


@pytest.mark.parametrize(("args", "stdout"), [
    (("call", BUS_NAME, ROOT, MANAGER_IFACE, "GetDevice", "s", "usb:1-2"), f'o "{DEVICE}"\n'),
    (("call", BUS_NAME, ROOT, MANAGER_IFACE, "Explain", "s", "usb:1-2"),
     's "usb:1-2 stays on the host"\n'),
    (("get-property", BUS_NAME, ROOT, MANAGER_IFACE, "Version"), 's "0-test"\n'),
    (("get-property", BUS_NAME, DEVICE, DEVICE_IFACE, "Id"), 's "usb:1-2"\n'),
    (("call", BUS_NAME, DEVICE, "org.freedesktop.DBus.Properties", "GetAll", "s", DEVICE_IFACE),
     'a{sv} 1 "Id" s "usb:1-2"\n'),
    (("call", BUS_NAME, ROOT, "org.freedesktop.DBus.Peer", "Ping"), ""),
], ids=["GetDevice", "Explain", "Get", "Get-device", "GetAll", "Ping"])
async def test_nobody_can_read(system_bus: private_bus.PrivateSystemBus,
                               calls: Calls, args: tuple[str, ...], stdout: str) -> None:
    result = await busctl_as_nobody(system_bus, *args)
    assert (result.returncode, result.stdout) == (0, stdout), result.stderr


async def test_nobody_can_introspect_and_list_objects(
        system_bus: private_bus.PrivateSystemBus, calls: Calls) -> None:
    result = await busctl_as_nobody(system_bus, "introspect", BUS_NAME, ROOT)
    assert result.returncode == 0, result.stderr
    assert MANAGER_IFACE in result.stdout
    result = await busctl_as_nobody(system_bus, "call", BUS_NAME, ROOT,
                                    "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
    assert result.returncode == 0, result.stderr
    assert DEVICE in result.stdout


@pytest.mark.parametrize(("path", "iface", "member", "args"), [
    (ROOT, MANAGER_IFACE, "Attach", ("usb:1-2", "win11")),
    (ROOT, MANAGER_IFACE, "Detach", ("usb:1-2",)),
    (ROOT, MANAGER_IFACE, "ClearOverride", ("usb:1-2",)),
    (ROOT, MANAGER_IFACE, "Reload", ()),
    (DEVICE, DEVICE_IFACE, "Attach", ("win11",)),
    (DEVICE, DEVICE_IFACE, "Detach", ()),
    (DEVICE, DEVICE_IFACE, "ClearOverride", ()),
], ids=["Manager.Attach", "Manager.Detach", "Manager.ClearOverride", "Manager.Reload",
        "Device.Attach", "Device.Detach", "Device.ClearOverride"])
async def test_nobody_reaches_the_mutating_methods(
        system_bus: private_bus.PrivateSystemBus, calls: Calls,
        path: str, iface: str, member: str, args: tuple[str, ...]) -> None:
    """The bus lets them through: polkit, asked by phyllod, decides."""
    result = await busctl_as_nobody(
        system_bus, "call", BUS_NAME, path, iface, member, *(("s" * len(args),) if args else ()),
        *args)
    assert result.returncode == 0, result.stderr
    assert calls == [(iface, member, args)]


@pytest.mark.parametrize(("args", "refused"), [
    (("call", BUS_NAME, ROOT, SECRET_IFACE, "Reveal"), (SECRET_IFACE, "Reveal")),
    (("call", BUS_NAME, ROOT, MANAGER_IFACE, "Frobnicate"), (MANAGER_IFACE, "Frobnicate")),
    (("set-property", BUS_NAME, ROOT, SECRET_IFACE, "Knob", "s", "tampered"),
     ("org.freedesktop.DBus.Properties", "Set")),
], ids=["other-interface", "other-method", "Properties.Set"])
async def test_nobody_is_refused_what_the_policy_does_not_list(
        system_bus: private_bus.PrivateSystemBus, calls: Calls,
        args: tuple[str, ...], refused: tuple[str, str]) -> None:
    result = await busctl_as_nobody(system_bus, *args)
    assert result.returncode != 0
    assert "Access denied" in result.stderr
    assert calls == []
    # The bus itself refused it (not the stand-in), and says so in its log.
    interface, member = refused
    assert re.search(rf'Rejected send message, .* \(uid=65534 .* interface="{interface}" '
                     rf'member="{member}"', system_bus.log()), system_bus.log()


async def check_authorization(bus: MessageBus, subject: str, action: str) -> tuple[bool, bool]:
    """polkit's (authorized, challenge) for bus name ``subject`` doing ``action``.

    Asked the way phyllod asks: a system-bus-name subject, no interaction.
    """
    reply = await bus.call(Message(
        destination=private_bus.POLKIT_NAME, path=private_bus.POLKIT_PATH,
        interface=private_bus.POLKIT_IFACE, member="CheckAuthorization",
        signature="(sa{sv})sa{ss}us",
        body=[["system-bus-name", {"name": Variant("s", subject)}], action, {}, 0, ""]))
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        raise DBusError(reply.error_name, reply.body[0])
    authorized, challenge, _details = reply.body[0]
    return authorized, challenge


async def test_mock_polkit_answers_per_set_allowed(
        system_bus: private_bus.PrivateSystemBus,
        mock_polkit: private_bus.MockPolkit) -> None:
    bus = await MessageBus(bus_address=system_bus.address, bus_type=BusType.SYSTEM).connect()
    try:
        name = bus.unique_name
        assert await check_authorization(bus, name, POLKIT_ATTACH) == (False, False)
        mock_polkit.set_allowed([POLKIT_ATTACH])
        assert await check_authorization(bus, name, POLKIT_ATTACH) == (True, False)
        assert await check_authorization(bus, name, POLKIT_RELOAD) == (False, False)
    finally:
        bus.disconnect()


#: Holds a bus connection open until stdin closes, after printing its unique name.
HOLD_CONNECTION = """\
import asyncio, sys
from dbus_fast.aio import MessageBus

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    print(bus.unique_name, flush=True)
    await asyncio.to_thread(sys.stdin.read)

asyncio.run(main())
"""


async def test_real_polkit_authorizes_root_and_not_a_sessionless_user(
        system_bus: private_bus.PrivateSystemBus,
        real_polkit: private_bus.RealPolkit) -> None:
    """The shipped actions as polkitd reads them: root always, nobody (no session) never.

    Both subjects are bus names, as phyllod passes its callers' senders.
    """
    bus = await MessageBus(bus_address=system_bus.address, bus_type=BusType.SYSTEM).connect()
    holder = subprocess.Popen(
        [*private_bus.AS_NOBODY, sys.executable, "-c", HOLD_CONNECTION, system_bus.address],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/", env=system_bus.env())
    try:
        assert holder.stdout is not None
        nobody = (await asyncio.to_thread(holder.stdout.readline)).strip()
        assert nobody.startswith(":"), "the connection held as nobody did not come up"
        for action in (POLKIT_ATTACH, POLKIT_RELOAD):
            assert await check_authorization(bus, bus.unique_name, action) == (True, False)
            # allow_any is auth_admin(_keep): not authorized, but a password would do.
            assert await check_authorization(bus, nobody, action) == (False, True), \
                real_polkit.log()
        # answer: allow_any is "no", so no password helps someone outside the active session.
        assert await check_authorization(bus, bus.unique_name, POLKIT_ANSWER) == (True, False)
        assert await check_authorization(bus, nobody, POLKIT_ANSWER) == (False, False)
        # The control: an action the shipped file does not declare is an error for anyone.
        with pytest.raises(DBusError, match="is not registered"):
            await check_authorization(bus, bus.unique_name, "me.phyllo.phyllod.unknown")
    finally:
        bus.disconnect()
        holder.communicate(timeout=10)


def test_bus_policy_opens_exactly_the_contracts_methods() -> None:
    """The conf names methods one by one, so it must follow the introspection XML.

    A method added to the API without a hole here would be refused by the bus
    to every caller; a hole left for a removed one would open whatever later
    takes its name, unreviewed.
    """
    conf = ET.parse(private_bus.SHIPPED_CONF).getroot()
    opened = {(rule.get("send_interface"), rule.get("send_member"))
              for policy in conf.iter("policy") if policy.get("context") == "default"
              for rule in policy.iter("allow")
              if rule.get("send_destination") == BUS_NAME
              and rule.get("send_interface", "").startswith(f"{BUS_NAME}.")}
    declared: set[tuple[str | None, str | None]] = set()
    for xml in DBUS_DIR.glob(f"{BUS_NAME}.*.xml"):
        for interface in ET.parse(xml).getroot().iter("interface"):
            declared |= {(interface.get("name"), m.get("name")) for m in interface.iter("method")}
            # Properties.Set stays closed on the bus because nothing is writable.
            assert {p.get("access") for p in interface.iter("property")} <= {"read"}, xml
    assert {iface for iface, _ in declared} >= {MANAGER_IFACE, DEVICE_IFACE}
    assert opened == declared


def test_polkit_policy_declares_the_daemons_actions() -> None:
    root = ET.parse(private_bus.SHIPPED_POLICY).getroot()
    assert root.tag == "policyconfig"
    assert root.findtext("vendor") == "phyllod"
    actions = {a.get("id"): a for a in root.iter("action")}
    assert set(actions) == {POLKIT_ATTACH, POLKIT_ATTACH_PCI, POLKIT_DETACH, POLKIT_RELOAD,
                            POLKIT_ANSWER}
    # Every $(key) a message names is a detail phyllod passes for a device (polkit
    # would show "$(key)" as it is otherwise); reload concerns no device.
    device = Device(subsystem=Subsystem.USB, sys_path="/sys/x", port="1-2", vendor="1050",
                    product="0407")
    passed = set(gate.details(device, "work"))
    for action_id, action in actions.items():
        assert action.findtext("description", "").strip()
        message = action.findtext("message", "").strip()
        assert message
        keys = set(re.findall(r"\$\((\w+)\)", message))
        assert keys <= (set() if action_id == POLKIT_RELOAD else passed), (action_id, keys)

    def defaults(action_id: str) -> tuple[str | None, ...]:
        node = actions[action_id].find("defaults")
        assert node is not None
        return tuple(node.findtext(k) for k in ("allow_any", "allow_inactive", "allow_active"))

    assert defaults(POLKIT_ATTACH) == ("auth_admin", "auth_admin", "yes")
    assert defaults(POLKIT_ATTACH_PCI) == ("auth_admin", "auth_admin", "auth_admin_keep")
    assert defaults(POLKIT_DETACH) == ("auth_admin", "auth_admin", "yes")
    assert defaults(POLKIT_RELOAD) == ("auth_admin_keep",) * 3
    assert defaults(POLKIT_ANSWER) == ("no", "no", "yes")

    def implies(action_id: str) -> set[str]:
        return {word for a in actions[action_id].iter("annotate")
                if a.get("key") == "org.freedesktop.policykit.imply"
                for word in (a.text or "").split()}

    # Who may put a device into a guest may take it back; PCI covers USB.
    assert implies(POLKIT_ATTACH) == {POLKIT_DETACH}
    assert implies(POLKIT_ATTACH_PCI) == {POLKIT_ATTACH, POLKIT_DETACH}


def test_activation_file_hands_over_to_systemd() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(DBUS_DIR / "me.phyllo.Phyllod1.service")
    assert parser.sections() == ["D-BUS Service"]
    assert dict(parser["D-BUS Service"]) == {
        "Name": BUS_NAME, "Exec": "/bin/false", "User": "root",
        "SystemdService": "phyllod.service"}
