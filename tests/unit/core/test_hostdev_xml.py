import xml.etree.ElementTree as ET

from factories import usb

from phyllod.core.hostdev_xml import hostdev_xml, parse_hostdevs, usb_hostdev_xml
from phyllod.core.model import Device, Hostdev, Subsystem


def test_hostdev_names_ids_address_and_our_alias():
    d = usb(port="1-2.3", devnum=17, vendor="1050", product="0407")
    root = ET.fromstring(usb_hostdev_xml(d))
    assert root.attrib == {"mode": "subsystem", "type": "usb", "managed": "yes"}
    assert root.find("source/vendor").get("id") == "0x1050"
    assert root.find("source/product").get("id") == "0x0407"
    assert root.find("source/address").attrib == {"bus": "1", "device": "17"}
    assert root.find("alias").get("name") == "ua-phyllod-usb1-2_3-17"


def test_identical_devices_get_distinct_hostdevs():
    left, right = usb(port="1-2", devnum=3), usb(port="1-3", devnum=4)
    assert usb_hostdev_xml(left) != usb_hostdev_xml(right)


def test_device_strings_never_reach_the_xml():
    d = usb(serial="</source><hostdev>", product_name="'\"&<>", manufacturer="\x00evil")
    text = usb_hostdev_xml(d)
    assert "evil" not in text and "hostdev><hostdev" not in text
    assert ET.fromstring(text).tag == "hostdev"


def test_parse_domain_hostdevs_round_trip_and_foreign_forms():
    d = usb(devnum=9)
    domain = f"""<domain type='kvm'><name>w</name><devices>
      <disk type='file'/>
      {usb_hostdev_xml(d)}
      <hostdev mode='subsystem' type='usb'>
        <source><vendor id='0x046D'/><product id='0xc52b'/></source>
        <alias name='hostdev1'/>
      </hostdev>
      <hostdev mode='subsystem' type='usb'>
        <source><address bus='3' device='0x0a'/></source>
      </hostdev>
      <hostdev mode='subsystem' type='pci'>
        <source><address domain='0' bus='3' slot='0' function='0'/></source>
      </hostdev>
    </devices></domain>"""
    assert parse_hostdevs(domain) == (
        Hostdev(alias=d.alias, vendor="0627", product="0001", bus=1, device=9),
        Hostdev(alias="hostdev1", vendor="046d", product="c52b", bus=None, device=None),
        Hostdev(alias="", vendor="", product="", bus=3, device=10),
        Hostdev(alias="", subsystem=Subsystem.PCI, address="0000:03:00.0"),
    )
    assert parse_hostdevs(domain)[0].owned
    assert not parse_hostdevs(domain)[1].owned


def test_pci_hostdev_is_managed_by_address_with_our_alias():
    d = Device(subsystem=Subsystem.PCI,
               sys_path="/sys/devices/pci0000:00/0000:00:1c.0/0000:03:00.0",
               address="0000:03:00.0", vendor="8086", product="2723", device_class="028000")
    root = ET.fromstring(hostdev_xml(d))
    assert (root.get("type"), root.get("managed")) == ("pci", "yes")
    address = root.find("source/address")
    assert address is not None and address.attrib == {
        "domain": "0x0000", "bus": "0x03", "slot": "0x00", "function": "0x0"}
    assert root.find("alias").get("name") == "ua-phyllod-pci0000_03_00_0-0"
    domain = f"<domain><devices>{hostdev_xml(d)}</devices></domain>"
    (parsed,) = parse_hostdevs(domain)
    assert (parsed.address, parsed.owned, parsed.slot) == (d.address, True, d.slot)
