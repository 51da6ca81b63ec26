"""contract.py, the shipped introspection XML and the daemon's declarations say the same.

The XML under dbus/ is what packagers install and clients read; contract.py is
what the daemon, phyllodctl and the applet use; interfaces.py is what dbus-fast
exports. The integration tests check the running daemon against the XML; these
check the three against each other without a bus, so none can drift.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from dbus_fast.constants import PropertyAccess

from phyllod import contract
from phyllod.bus import gate
from phyllod.bus.interfaces import (
    DeviceInterface,
    GuestInterface,
    ManagerInterface,
    Published,
    RequestInterface,
)
from phyllod.core import errors

DBUS = Path(__file__).resolve().parents[3] / "dbus"
DECLARED: dict[str, Published] = {
    contract.DEVICE_IFACE: DeviceInterface({}),
    contract.GUEST_IFACE: GuestInterface({}),
    contract.REQUEST_IFACE: RequestInterface({}),
    contract.MANAGER_IFACE: ManagerInterface(None, {}),  # type: ignore[arg-type]
}

Arguments = tuple[tuple[str, str], ...]
Members = tuple[dict[str, str], dict[str, tuple[Arguments, str]], set[str]]


def shipped(interface: str) -> Members:
    """(properties, methods, signals) of ``dbus/<interface>.xml``: {name: signature},
    {name: (((argument, signature), ...), reply signature)}, {name}; every property
    read-only."""
    root = ET.parse(DBUS / f"{interface}.xml").getroot()
    (element,) = root.findall("interface")
    assert element.get("name") == interface
    props = {}
    for p in element.findall("property"):
        assert p.get("access") == "read", (interface, p.get("name"))
        props[p.get("name") or ""] = p.get("type") or ""
    methods = {}
    for m in element.findall("method"):
        args = m.findall("arg")
        methods[m.get("name") or ""] = (
            tuple((a.get("name") or "", a.get("type") or "") for a in args
                  if a.get("direction", "in") == "in"),
            "".join(a.get("type") or "" for a in args if a.get("direction") == "out"))
    return props, methods, {s.get("name") or "" for s in element.findall("signal")}


def in_contract(interface: str) -> Members:
    props, methods = contract.TABLES[interface]
    return dict(props), {n: (m.args, m.returns) for n, m in methods.items()}, set()


def declared(interface: str) -> Members:
    """What dbus-fast would introspect of the daemon's object for ``interface``."""
    found = DECLARED[interface].introspect()
    assert all(p.access is PropertyAccess.READ for p in found.properties)
    return ({p.name: p.signature for p in found.properties},
            {m.name: (tuple((a.name or "", a.signature) for a in m.in_args), m.out_signature)
             for m in found.methods},
            {s.name for s in found.signals})


def test_one_xml_file_per_interface():
    assert sorted(p.name for p in DBUS.glob("*.xml")) == sorted(
        f"{i}.xml" for i in contract.INTERFACES)
    assert set(contract.TABLES) == set(contract.INTERFACES)


@pytest.mark.parametrize("interface", contract.INTERFACES)
def test_the_xml_says_what_the_contract_says(interface: str):
    assert shipped(interface) == in_contract(interface)


@pytest.mark.parametrize("interface", contract.INTERFACES)
def test_the_daemon_declares_what_the_contract_says(interface: str):
    assert declared(interface) == in_contract(interface)


def test_the_gate_takes_exactly_the_mutating_methods():
    mutating = {(i, name) for i, (_, methods) in contract.TABLES.items()
                for name, m in methods.items() if m.mutates}
    assert set(gate.MUTATIONS) == mutating


@pytest.mark.parametrize("error", sorted(errors.PhyllodError.__subclasses__(),
                                         key=lambda e: e.__name__),
                         ids=lambda e: e.__name__)
def test_every_error_of_phyllod_has_its_name_in_the_contract(error: type[errors.PhyllodError]):
    assert gate.error_name(error("x")) in contract.ERRORS


def test_every_error_name_in_the_contract_is_one_phyllod_raises():
    raised = {gate.error_name(e("x")) for e in errors.PhyllodError.__subclasses__()}
    assert set(contract.ERRORS) == raised


def test_the_polkit_ids_are_the_shipped_policy_actions():
    root = ET.parse(DBUS / "me.phyllo.phyllod.policy").getroot()
    assert sorted(a.get("id") or "" for a in root.iter("action")) == sorted(contract.POLKIT_IDS)


@pytest.mark.parametrize(("made", "path"), [
    (contract.device_path("usb:1-2.3"), "/me/phyllo/Phyllod1/devices/usb_1_2_3"),
    (contract.device_path("pci:0000:03:00.0"), "/me/phyllo/Phyllod1/devices/pci_0000_03_00_0"),
    (contract.guest_path("8a2e-41"), "/me/phyllo/Phyllod1/guests/8a2e_41"),
    (contract.request_path(7), "/me/phyllo/Phyllod1/requests/7"),
])
def test_object_paths(made: str, path: str):
    assert made == path
