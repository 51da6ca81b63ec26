"""libvirt ``<hostdev>`` XML: built from a device identity, read from a domain.

Only ids, numbers and our own alias go into the XML we build, through
ElementTree so nothing is ever pasted into markup; strings a device reports
about itself (serial, names) are never part of it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from phyllod.model import Device, Subsystem, UsbHostdev


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


def parse_usb_hostdevs(domain_xml: str) -> tuple[UsbHostdev, ...]:
    """The USB hostdevs of a domain's XML, in document order."""
    root = ET.fromstring(domain_xml)
    found = []
    for hostdev in root.iterfind("./devices/hostdev[@type='usb']"):
        source = hostdev.find("source")
        alias = hostdev.find("alias")
        address = source.find("address") if source is not None else None
        found.append(
            UsbHostdev(
                alias=alias.get("name", "") if alias is not None else "",
                vendor=_hex_id(source.find("vendor")) if source is not None else "",
                product=_hex_id(source.find("product")) if source is not None else "",
                bus=_int(address.get("bus")) if address is not None else None,
                device=_int(address.get("device")) if address is not None else None,
            )
        )
    return tuple(found)
