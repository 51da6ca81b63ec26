"""libvirt ``<hostdev>`` XML: built from a device identity, read from a domain.

Only ids, numbers and our own alias go into the XML we build, through
ElementTree so nothing is ever pasted into markup; strings a device reports
about itself (serial, names) are never part of it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from phyllod.core.model import Device, Hostdev, Subsystem


def usb_hostdev_xml(device: Device) -> str:
    """A live-attachable USB hostdev naming the device by ids *and* address.

    The ids alone cannot tell two identical keyboards apart; the bus/device
    address alone could hit another device after a replug. Both together name
    exactly this enumeration.
    """
    if device.subsystem is not Subsystem.USB:
        raise ValueError(f"{device.id} is not a USB device")
    hostdev = ET.Element("hostdev", mode="subsystem", type="usb", managed="yes")
    source = ET.SubElement(hostdev, "source")
    ET.SubElement(source, "vendor", id=f"0x{device.vendor}")
    ET.SubElement(source, "product", id=f"0x{device.product}")
    ET.SubElement(source, "address", bus=str(device.busnum), device=str(device.devnum))
    ET.SubElement(hostdev, "alias", name=device.alias)
    return ET.tostring(hostdev, encoding="unicode")


def pci_hostdev_xml(device: Device) -> str:
    """A managed PCI hostdev: libvirt moves the function to vfio-pci and back.

    ``managed='yes'`` makes libvirt unbind the host driver before the attach
    and bind it again when the guest lets go (detach, shutdown, crash).
    """
    if device.subsystem is not Subsystem.PCI:
        raise ValueError(f"{device.id} is not a PCI device")
    domain, bus, rest = device.address.split(":")
    slot, function = rest.split(".")
    hostdev = ET.Element("hostdev", mode="subsystem", type="pci", managed="yes")
    source = ET.SubElement(hostdev, "source")
    ET.SubElement(source, "address", domain=f"0x{domain}", bus=f"0x{bus}", slot=f"0x{slot}",
                  function=f"0x{function}")
    ET.SubElement(hostdev, "alias", name=device.alias)
    return ET.tostring(hostdev, encoding="unicode")


def hostdev_xml(device: Device) -> str:
    """The hostdev XML for a USB or PCI device."""
    if device.subsystem is Subsystem.PCI:
        return pci_hostdev_xml(device)
    return usb_hostdev_xml(device)


def _hex_id(element: ET.Element | None) -> str:
    if element is None:
        return ""
    return element.get("id", "").lower().removeprefix("0x").zfill(4)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        return None


def _pci_address(address: ET.Element | None) -> str:
    """``<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>`` → 0000:03:00.0."""
    if address is None:
        return ""
    parts = [_int(address.get(k)) for k in ("domain", "bus", "slot", "function")]
    if any(p is None for p in parts):
        return ""
    domain, bus, slot, function = parts
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def parse_hostdevs(domain_xml: str) -> tuple[Hostdev, ...]:
    """The USB and PCI hostdevs of a domain's XML, in document order."""
    root = ET.fromstring(domain_xml)
    found = []
    for hostdev in root.iterfind("./devices/hostdev"):
        kind = hostdev.get("type")
        source = hostdev.find("source")
        alias_el = hostdev.find("alias")
        alias = alias_el.get("name", "") if alias_el is not None else ""
        address = source.find("address") if source is not None else None
        if kind == "pci":
            found.append(Hostdev(alias=alias, subsystem=Subsystem.PCI,
                                 address=_pci_address(address)))
        elif kind == "usb":
            found.append(
                Hostdev(
                    alias=alias,
                    vendor=_hex_id(source.find("vendor")) if source is not None else "",
                    product=_hex_id(source.find("product")) if source is not None else "",
                    bus=_int(address.get("bus")) if address is not None else None,
                    device=_int(address.get("device")) if address is not None else None,
                )
            )
    return tuple(found)
