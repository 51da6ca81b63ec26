"""Real USB devices (tests/data/devices/SOURCES.md) in umockdev: the verdict
and the matches each must get, read through the same adapters as the daemon.

And a USB 3 hub as the kernel lays it out: two hubs, one per bus, whose ports
are linked as ``peer``s; a rule on either half covers the physical port.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testbed
from gi.repository import UMockdev

from phyllod.core.policy_parser import parse_policy_text
from phyllod.core.safety.pci import Risk
from phyllod.core.safety.usb import usb_verdict
from phyllod.core.serial_trust import with_identities
from phyllod.host.sysfs import read_host_facts
from phyllod.host.udev_source import present_devices

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(testbed.available()), reason=testbed.available())]

DATA = Path(__file__).parent.parent / "data" / "devices"
SYS = Path("/sys")
KINESIS_INPUT = ("/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2/"
                 "1-1.5.4.2:1.0/input/input5")


@pytest.fixture
def tb() -> UMockdev.Testbed:
    return testbed.new_testbed()


def _load(tb: UMockdev.Testbed, name: str) -> dict:
    assert tb.add_from_file(str(DATA / name))
    return {d.id: d for d in present_devices()}


def _rules(text: str) -> list:
    content, problems = parse_policy_text(text, "real.toml")
    assert problems == []
    return [r.match for r in content.rules]


def _kinesis(tb: UMockdev.Testbed) -> dict:
    devices = _load(tb, "kinesis-keyboard-behind-hubs.umockdev")
    capabilities = Path(tb.get_root_dir()) / f"sys{KINESIS_INPUT}" / "capabilities"
    capabilities.mkdir()
    (capabilities / "ev").write_text("120013\n")
    (capabilities / "key").write_text("80000000000000 e0b0ffdf01cfffff fffffffffffffffe\n")
    return devices


def test_the_only_keyboard_is_refused_itself_and_through_each_hub(tb):
    devices = _kinesis(tb)
    controller = devices.pop("pci:0000:00:1a.0")
    assert sorted(devices) == ["usb:1-1", "usb:1-1.5", "usb:1-1.5.4", "usb:1-1.5.4.2"]
    # PCI functions name nothing themselves; the hardware database does, as for lspci.
    assert controller.describe() == ("pci:0000:00:1a.0 (8086:3b3c Intel Corporation 5 Series/"
                                     "3400 Series Chipset USB2 Enhanced Host Controller)")
    facts = read_host_facts(SYS, cmdline="", mounts="", swaps="")
    assert facts.keyboards == {f"/sys{KINESIS_INPUT}": "HID 05f3:0007"}
    for device_id in devices:
        verdict = usb_verdict(devices[device_id], facts)
        assert [f.risk for f in verdict.blocking] == [Risk.HOST_KEYBOARD], device_id
    keyboard = usb_verdict(devices["usb:1-1.5.4.2"], facts)
    assert keyboard.reason().startswith(
        "usb:1-1.5.4.2 carries the host's only keyboard, HID 05f3:0007 (usb:1-1.5.4.2)")
    assert usb_verdict(devices["usb:1-1.5.4.2"], facts, frozenset({"host-keyboard"})).ok


def test_a_device_without_strings_is_named_from_the_hardware_database(tb):
    keyboard = _kinesis(tb)["usb:1-1.5.4.2"]
    assert (keyboard.manufacturer, keyboard.product_name) == ("", "")
    assert (keyboard.vendor_db, keyboard.model_db) == ("PI Engineering, Inc.",
                                                       "Kinesis Advantage PRO MPC/USB Keyboard")
    assert keyboard.describe() == ("usb:1-1.5.4.2 (05f3:0007 PI Engineering, Inc. Kinesis "
                                   "Advantage PRO MPC/USB Keyboard)")
    assert keyboard.interface_classes == ("030101", "030000")
    boot_keyboard, bluetooth = _rules(
        '[[rule]]\nname="k"\nmatch={interface_class="0301"}\nguest="g"\n'
        '[[rule]]\nname="bt"\nmatch={interface_class="e00101"}\nguest="g"\n')
    assert boot_keyboard.matches(keyboard) and not bluetooth.matches(keyboard)
    hub = _kinesis(testbed.new_testbed())["usb:1-1.5.4"]
    assert hub.describe() == "usb:1-1.5.4 (05f3:0081 PI Engineering Kinesis Keyboard Hub)"


def test_a_webcam_with_a_microphone_is_no_headset(tb):
    webcam = _load(tb, "panasonic-dvc-webcam-with-mic.umockdev")["usb:2-3"]
    assert webcam.interface_classes == ("0e0100", "0e0200", "010100", "010200")
    assert webcam.describe() == "usb:2-3 (04da:231d Panasonic DVC)"
    assert webcam.model_db == "DVC Web Camera Device"
    headsets, audio, video = _rules(
        '[[rule]]\nname="headsets"\nmatch={interface_class="01", not_interface_class="0e"}\n'
        'action="ask"\n'
        '[[rule]]\nname="audio"\nmatch={interface_class="01"}\naction="ask"\n'
        '[[rule]]\nname="video"\nmatch={interface_class="0e:01:*"}\naction="ask"\n')
    assert not headsets.matches(webcam)
    assert audio.matches(webcam), "the reason a bare 01 is too wide"
    assert video.matches(webcam)
    assert webcam.identity == "usb:04da:231d:0000b16313d5"


def _judged(tb: UMockdev.Testbed, *names: str) -> dict:
    for name in names:
        assert tb.add_from_file(str(DATA / name))
    return with_identities({d.id: d for d in present_devices()})


BLUETOOTH_AND_TETHERING = (
    '[[rule]]\nname="bt"\nmatch={interface_class="e00101"}\nguest="g"\n'
    '[[rule]]\nname="tethering"\nmatch={interface_class=["e00103", "ef0401"]}\nguest="g"\n'
    '[[rule]]\nname="wireless"\nmatch={interface_class="e0"}\nguest="g"\n'
    '[[rule]]\nname="vendor bt"\nmatch={interface_class="ff0101"}\nguest="g"\n')


def test_bluetooth_adapters_and_a_tethering_phone_are_told_apart(tb):
    devices = _judged(tb, "realtek-8852be-bluetooth.umockdev",
                      "dell-dw380-bluetooth-vendor-class.umockdev",
                      "unisoc-uis7720-rndis-phone.umockdev")
    realtek, dell, phone = devices["usb:3-13"], devices["usb:1-1.4"], devices["usb:5-1"]
    assert realtek.interface_classes == ("e00101",)
    assert dell.interface_classes == ("ff0101", "ffffff", "fe0101")
    assert phone.interface_classes == ("e00103", "0a0000", "ff0000", "ff4201")
    bt, tethering, wireless, vendor_bt = _rules(BLUETOOTH_AND_TETHERING)
    assert [r.matches(realtek) for r in (bt, tethering, wireless)] == [True, False, True]
    assert [r.matches(phone) for r in (bt, tethering, wireless)] == [False, True, True], \
        "RNDIS is e0 too: only e00101 keeps the phone out of the Bluetooth guest"
    # Broadcom's modules say "vendor-specific" (ff/01/01) and still run btusb:
    # no class rule for Bluetooth takes them, a rule by ids or this triplet does.
    assert [r.matches(dell) for r in (bt, tethering, wireless, vendor_bt)] == [
        False, False, False, True]
    for d in devices.values():
        assert usb_verdict(d, read_host_facts(SYS, cmdline="", mounts="", swaps="")).ok, d.id


def test_factory_serials_are_no_identity(tb):
    """Every Realtek Bluetooth chip says 00e04c000001; the UNISOC phone and the
    Sony phone say 0123456789ABCDEF: each is known by its port, and a twin
    never shares its choices."""
    devices = _judged(tb, "realtek-8852be-bluetooth.umockdev",
                      "unisoc-uis7720-rndis-phone.umockdev",
                      "dell-dw380-bluetooth-vendor-class.umockdev")
    sony = _judged(testbed.new_testbed(), "sony-xperia-placeholder-serial.umockdev")
    devices.update(sony)
    assert {k: (d.identity, d.serial_doubt) for k, d in devices.items()
            if k.startswith("usb:") and d.serial} == {
        "usb:3-13": ("usb:3-13", "serial 00e04c000001 is a placeholder"),
        "usb:5-1": ("usb:5-1", "serial 0123456789ABCDEF is a placeholder"),
        "usb:1-1.5.2.4": ("usb:1-1.5.2.4", "serial 0123456789ABCDEF is a placeholder"),
        # A Broadcom module's own Bluetooth address: a real serial.
        "usb:1-1.4": ("usb:413c:8197:74E54354F609", ""),
    }
    phone = devices["usb:1-1.5.2.4"]
    assert phone.describe() == "usb:1-1.5.2.4 (0fce:0166 Sony MiniPro)"
    assert phone.interface_classes == ("ffff00",)
    mtp, bt = _rules('[[rule]]\nname="mtp"\nmatch={interface_class="ff:ff:00"}\nguest="g"\n'
                     '[[rule]]\nname="bt"\nmatch={interface_class="e00101"}\nguest="g"\n')
    assert mtp.matches(phone) and not bt.matches(phone)


# ---------------------------------------------------------------- a USB 3 hub

ROOT = "/sys/devices/pci0000:00/0000:00:14.0"


def _usb3_desk(tb: UMockdev.Testbed) -> None:
    """An xHCI controller (bus 1: USB 2, bus 2: SuperSpeed) with a USB 3 hub in
    root port 3 (1-3 and 2-3), a SuperSpeed stick in its port 1 (2-3.1), a USB 2
    mouse in its port 2 (1-3.2), and a USB 2 hub in its port 4 (1-3.4) with a
    keyboard in that hub's port 1 (1-3.4.1). Ports 3 of the root hubs are peers,
    and so are the USB 3 hub's ports of the same number."""
    def device(name: str, parent: str | None, klass: str = "00", vendor: str = "0781",
               interface: str = "080650") -> str:
        bus, _, _ = name.partition("-")
        attrs = ["idVendor", vendor, "idProduct", "5581", "bDeviceClass", klass,
                 "busnum", bus.removeprefix("usb"), "devnum", str(len(name))]
        props = ["DEVTYPE", "usb_device", "ID_USB_INTERFACES", f":{interface}:"]
        return tb.add_device("usb", name, parent, attrs, props)

    paths = {}
    for bus in ("usb1", "usb2"):
        paths[bus] = tb.add_device("usb", bus, None, ["bDeviceClass", "09", "busnum",
                                                      bus[-1], "devnum", "1"],
                                   ["DEVTYPE", "usb_device"])
    paths["1-3"] = device("1-3", paths["usb1"], "09", "05e3", "090000")
    paths["2-3"] = device("2-3", paths["usb2"], "09", "05e3", "090000")
    paths["2-3.1"] = device("2-3.1", paths["2-3"])
    paths["1-3.2"] = device("1-3.2", paths["1-3"], vendor="046d", interface="030102")
    paths["1-3.4"] = device("1-3.4", paths["1-3"], "09", "1a40", "090000")
    paths["1-3.4.1"] = device("1-3.4.1", paths["1-3.4"], vendor="046d", interface="030101")
    root = Path(tb.get_root_dir())

    def port(hub: str, hub_name: str, number: int) -> Path:
        interface = "1-0:1.0" if hub_name == "usb1" else (
            "2-0:1.0" if hub_name == "usb2" else f"{hub_name}:1.0")
        path = root / paths[hub].lstrip("/") / interface / f"{hub_name}-port{number}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def plugged(child: str, port_dir: Path) -> None:
        os.symlink(os.path.relpath(port_dir, root / paths[child].lstrip("/")),
                   root / paths[child].lstrip("/") / "port")

    def peers(a: Path, b: Path) -> None:
        os.symlink(os.path.relpath(b, a), a / "peer")
        os.symlink(os.path.relpath(a, b), b / "peer")

    root1, root2 = port("usb1", "usb1", 3), port("usb2", "usb2", 3)
    peers(root1, root2)
    plugged("1-3", root1)
    plugged("2-3", root2)
    for n in (1, 2, 4):
        peers(port("1-3", "1-3", n), port("2-3", "2-3", n))
    plugged("2-3.1", port("2-3", "2-3", 1))
    plugged("1-3.2", port("1-3", "1-3", 2))
    plugged("1-3.4", port("1-3", "1-3", 4))
    plugged("1-3.4.1", port("1-3.4", "1-3.4", 1))  # a USB 2 hub's port: no peer


def test_usb3_hub_halves_are_one_physical_port(tb):
    _usb3_desk(tb)
    devices = {d.id: d for d in present_devices()}
    assert {k: d.peer_ports for k, d in devices.items()} == {
        "usb:1-3": ("2-3",), "usb:2-3": ("1-3",), "usb:2-3.1": ("1-3.1",),
        "usb:1-3.2": ("2-3.2",), "usb:1-3.4": ("2-3.4",), "usb:1-3.4.1": ("2-3.4.1",),
    }
    usb2_half, superspeed_half, exact = _rules(
        '[[rule]]\nname="a"\nmatch={port_below="1-3"}\nguest="g"\n'
        '[[rule]]\nname="b"\nmatch={port_below="2-3"}\nguest="g"\n'
        '[[rule]]\nname="c"\nmatch={port="1-3.1"}\nguest="g"\n')
    behind = {"usb:2-3.1", "usb:1-3.2", "usb:1-3.4.1"}
    for rule in (usb2_half, superspeed_half):
        assert {k for k, d in devices.items() if rule.matches(d)} == behind
    assert {k for k, d in devices.items() if exact.matches(d)} == {"usb:2-3.1"}


def test_ports_without_peer_links_stay_apart(tb):
    """An older kernel, or a hub the kernel could not pair: nothing is guessed."""
    tb.add_device("usb", "usb1", None, ["bDeviceClass", "09"], ["DEVTYPE", "usb_device"])
    tb.add_device("usb", "1-3", "/sys/devices/usb1", ["idVendor", "0781", "idProduct", "5581",
                                                       "busnum", "1", "devnum", "2"],
                  ["DEVTYPE", "usb_device"])
    (device,) = present_devices()
    assert device.peer_ports == ()
