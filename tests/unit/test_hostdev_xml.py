import xml.etree.ElementTree as ET

from factories import usb

from phyllod.hostdev_xml import parse_usb_hostdevs, usb_hostdev_xml
from phyllod.model import UsbHostdev


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
    assert parse_usb_hostdevs(domain) == (
        UsbHostdev(d.alias, "0627", "0001", 1, 9),
        UsbHostdev("hostdev1", "046d", "c52b", None, None),
        UsbHostdev("", "", "", 3, 10),
    )
    assert parse_usb_hostdevs(domain)[0].owned
    assert not parse_usb_hostdevs(domain)[1].owned
