"""Small builders for model values, so each test states only what matters."""

from __future__ import annotations

from phyllod.model import Device, Guest, GuestState, Subsystem, UsbHostdev
from phyllod.policy import Policy, parse_policy_text


def usb(port: str = "1-2", devnum: int = 5, vendor: str = "0627", product: str = "0001",
        serial: str = "", interfaces: tuple[str, ...] = ("030101",),
        device_class: str = "00", **kw: object) -> Device:
    bus = int(port.split("-", 1)[0])
    return Device(Subsystem.USB, f"/sys/devices/pci0000:00/usb{bus}/{port}", port=port,
                  busnum=bus, devnum=devnum, vendor=vendor, product=product, serial=serial,
                  interface_classes=interfaces, device_class=device_class, **kw)  # type: ignore[arg-type]


def guest(name: str = "work", state: GuestState = GuestState.RUNNING,
          hostdevs: tuple[UsbHostdev, ...] = (), uuid: str = "") -> Guest:
    uuid = uuid or f"00000000-0000-0000-0000-{abs(hash(name)) % 10**12:012d}"
    return Guest(name, uuid, state, hostdevs)


def held(device: Device, owned: bool = True) -> UsbHostdev:
    """The hostdev a guest holds for ``device`` (placed by phyllod or by hand)."""
    alias = device.alias if owned else "hostdev0"
    return UsbHostdev(alias, device.vendor, device.product, device.busnum, device.devnum)


def policy(text: str) -> Policy:
    rules, problems = parse_policy_text(text, "test.toml")
    assert not problems, problems
    return Policy(tuple(rules), ("test.toml",))
