"""Guest domain XML the tests define, built one way.

``qemu_guest`` is a QEMU guest that boots nothing (enough to run and hold
USB devices); ``driver_guest`` a domain of libvirt's test driver, which can
start holding hostdevs (``usb_hostdev``) as a guest does after a restart;
``node`` puts test domains into a test driver file (``test:///path.xml``).
"""

from __future__ import annotations

from collections.abc import Iterable

#: The USB controller of a guest that holds USB hostdevs.
XHCI = "<controller type='usb' model='qemu-xhci' index='0' ports='15'/>"


def qemu_guest(name: str, controllers: Iterable[str] = (XHCI,)) -> str:
    """A 64 MiB q35 guest with no disk and no OS, with these controllers."""
    devices = "".join(f"    {c}\n" for c in controllers)
    return (f"<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>64</memory>\n"
            f"  <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='q35'>hvm</type></os>\n"
            f"  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n{devices}"
            f"    <memballoon model='none'/>\n  </devices>\n</domain>\n")


def usb_hostdev(vendor: str, product: str, *, bus: int, device: int, alias: str) -> str:
    """A USB hostdev as phyllod attaches it (managed, by vendor/product and address)."""
    return (f"<hostdev mode='subsystem' type='usb' managed='yes'>\n"
            f"  <source><vendor id='0x{vendor}'/><product id='0x{product}'/>"
            f"<address bus='{bus}' device='{device}'/></source>\n"
            f"  <alias name='{alias}'/>\n</hostdev>\n")


def driver_guest(name: str, *, uuid: str = "", memory: int = 65536, vcpu: int = 0,
               hostdevs: Iterable[str] = ()) -> str:
    """A domain of libvirt's test driver (running when the driver loads it)."""
    lines = ["<domain type='test'>", f"  <name>{name}</name>"]
    if uuid:
        lines.append(f"  <uuid>{uuid}</uuid>")
    lines.append(f"  <memory>{memory}</memory>")
    if vcpu:
        lines.append(f"  <vcpu>{vcpu}</vcpu>")
    lines.append("  <os><type>hvm</type></os>")
    held = "".join(hostdevs)
    if held:
        lines += ["  <devices>", _indent(held, "    ").rstrip("\n"), "  </devices>"]
    return "\n".join(lines) + "\n</domain>\n"


def node(*domains: str) -> str:
    """A test driver file holding ``domains``."""
    return "<node>\n" + "".join(_indent(d, "  ") for d in domains) + "</node>\n"


def _indent(text: str, by: str) -> str:
    return "".join(by + line + "\n" for line in text.splitlines())
