"""The applet's tray menu and icon, decided from plain property dictionaries (no display)."""

from __future__ import annotations

from phyllod.applet.commands import Answer, Attach, ClearOverride, Forget, KeepOnHost
from phyllod.applet.menu import NOT_RUNNING, Entry, build_menu, device_label, tray_icon
from phyllod.applet.views import Snapshot
from phyllod.contract import DEVICE_IFACE as DEVICE
from phyllod.contract import GUEST_IFACE as GUEST
from phyllod.contract import MANAGER_IFACE as MANAGER
from phyllod.contract import REQUEST_IFACE as REQUEST
from phyllod.contract import ROOT

KBD = "/me/phyllo/Phyllod1/devices/usb_1_2"
REQ = "/me/phyllo/Phyllod1/requests/1"


def device(**props: object) -> dict:
    base = {"Id": "usb:1-2", "Name": "QEMU USB Keyboard", "Vendor": "0627", "Product": "0001",
            "State": "host", "Guest": "", "Rule": "", "Reason": "no rule matches",
            "Override": "", "OverrideGuest": "", "Identity": "usb:1-2", "Remembered": False,
            "RememberedGuest": ""}
    return {DEVICE: {**base, **props}}


def guest(name: str, state: str = "running") -> tuple[str, dict]:
    return f"/me/phyllo/Phyllod1/guests/{name}", {GUEST: {"Name": name, "UUID": name,
                                                          "State": state, "Devices": []}}


def snapshot(*extra: tuple[str, dict], **device_props: object) -> Snapshot:
    objects = {ROOT: {MANAGER: {"PolicyStatus": "ok", "PolicyError": ""}},
               KBD: device(**device_props), **dict([guest("work"), guest("games", "shutoff"),
                                                    guest("test")]), **dict(extra)}
    return Snapshot.from_objects(objects)


def labels(entries: tuple[Entry, ...]) -> list[str]:
    return [e.label for e in entries if not e.separator]


def actions(entries: tuple[Entry, ...]) -> dict[str, object]:
    return {e.label: e.command for e in entries if e.command is not None}


def test_not_running_is_one_entry_and_the_offline_icon():
    snap = Snapshot(connected=False)
    assert labels(build_menu(snap)) == [NOT_RUNNING]
    assert not build_menu(snap)[0].sensitive
    assert tray_icon(snap).icon == "phyllod-offline"


def test_device_on_host_offers_each_running_guest():
    menu = build_menu(snapshot())
    assert labels(menu) == ["QEMU USB Keyboard (usb:1-2): host"]
    sub = menu[0].children
    assert "State: host" in labels(sub) and "Reason: no rule matches" in labels(sub)
    # Running guests only, sorted by name. "Keep on the host" makes it a manual choice.
    assert actions(sub) == {"Attach to test": Attach(KBD, "test"),
                            "Attach to work": Attach(KBD, "work"),
                            "Keep on the host": KeepOnHost(KBD)}
    assert "Attach to games" not in actions(sub)
    assert tray_icon(snapshot()).icon == "phyllod"


def test_attached_device_with_override_and_remembered_answer():
    snap = snapshot(State="attached", Guest="work", Override="attach", OverrideGuest="work",
                    Remembered=True, RememberedGuest="work", Identity="usb:0627:0001:42")
    entry = build_menu(snap)[0]
    assert entry.label == "QEMU USB Keyboard (usb:1-2): attached to work"
    sub = entry.children
    assert "Guest: work" in labels(sub)
    assert "Manual override: attach (work)" in labels(sub)
    assert "Remembered answer: work" in labels(sub)
    assert actions(sub) == {"Attach to test": Attach(KBD, "test"),
                            "Keep on the host": KeepOnHost(KBD),
                            "Let the policy decide": ClearOverride(KBD),
                            "Forget remembered answer": Forget("usb:0627:0001:42")}


def test_long_reasons_are_wrapped_not_cut():
    reason = ("not safe to pass: IOMMU group 7 also holds 0000:00:1f.2 (SATA controller, "
              "driver ahci) which the host uses")
    sub = build_menu(snapshot(State="denied", Reason=reason))[0].children
    text = " ".join(label.strip() for label in labels(sub) if not label.startswith("Attach"))
    assert reason in text
    assert all(len(label) <= 60 for label in labels(sub))


def test_open_requests_come_first_with_every_answer():
    req = (REQ, {REQUEST: {"Device": KBD, "DeviceId": "usb:1-2",
                           "Description": "usb:1-2 (0627:0001 QEMU USB Keyboard)",
                           "Candidates": ["work", "test"], "Deadline": 0, "Rule": "ask"}})
    snap = snapshot(req, State="asking")
    menu = build_menu(snap)
    assert menu[0].label == "Where should usb:1-2 (0627:0001 QEMU USB Keyboard) go?"
    assert menu[1].separator
    assert actions(menu[0].children) == {
        "Send to work": Answer(REQ, "work"), "Send to test": Answer(REQ, "test"),
        "Keep on the host": Answer(REQ, ""),
        "Always send to work": Answer(REQ, "work", True),
        "Always send to test": Answer(REQ, "test", True),
        "Always keep on the host": Answer(REQ, "", True)}
    icon = tray_icon(snap)
    assert (icon.icon, icon.status) == ("phyllod-attention", "attention")
    assert "1 device waiting" in icon.title


def test_device_labels_name_the_guest_by_state():
    snap = snapshot(State="failed", Guest="work", Reason="libvirt said no")
    assert device_label(snap.devices[0]) == "QEMU USB Keyboard (usb:1-2): failed for work"
    nameless = Snapshot.from_objects({KBD: device(Name="")})
    assert nameless.devices[0].title == "0627:0001"


def test_devices_without_strings_are_named_from_the_hardware_database():
    """As phyllodctl list: every PCI function, and USB devices that say nothing."""
    nic = "/me/phyllo/Phyllod1/devices/pci_0000_03_00_0"
    snap = Snapshot.from_objects({
        KBD: device(Name="", VendorFromDatabase="PI Engineering, Inc.",
                    ModelFromDatabase="Kinesis Advantage PRO MPC/USB Keyboard"),
        nic: device(Id="pci:0000:03:00.0", Name="", Vendor="8086", Product="2723",
                    VendorFromDatabase="Intel Corporation", ModelFromDatabase=""),
    })
    wifi, kinesis = snap.devices  # sorted by id
    assert kinesis.title == "PI Engineering, Inc. Kinesis Advantage PRO MPC/USB Keyboard"
    assert device_label(wifi) == "Intel Corporation (pci:0000:03:00.0): host"
    # The device's own strings come first, as everywhere else.
    own = Snapshot.from_objects({KBD: device(VendorFromDatabase="QEMU", ModelFromDatabase="x")})
    assert own.devices[0].title == "QEMU USB Keyboard"


def test_policy_error_and_no_devices():
    objects = {ROOT: {MANAGER: {"PolicyStatus": "error",
                                "PolicyError": "10-x.toml:3: rule 'x': unknown key\nmore"}}}
    assert labels(build_menu(Snapshot.from_objects(objects))) == [
        "Policy error: 10-x.toml:3: rule 'x': unknown key", "No devices"]
