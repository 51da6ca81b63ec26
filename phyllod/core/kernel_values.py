"""The shapes and ranges of the numbers and names the kernel reports, checked once.

The udev adapter and the sysfs reader read bus and device numbers, ids,
classes, port paths, PCI addresses, IOMMU group links and driver names;
the rest of phyllod (reconcile, the hostdev XML, D-Bus ``u``/``i``
properties) relies on each being what the kernel would write. A value
outside its shape is None here, and the adapter decides: an identity field
makes the device unusable (logged once, skipped), an optional one is
dropped to its empty default. Python's ``int`` accepts too much for this
(``"+1"``, ``" 1_0 "``, Arabic-Indic digits, any size), so each parser
matches the kernel's own format first. Pure: no I/O.
"""

from __future__ import annotations

import re

from phyllod.core.device_text import REPLACEMENT, clean

#: include/linux/usb/hcd.h: bus numbers come from idr_alloc(…, 1, USB_MAXBUS=64).
USB_BUS_NUMBERS = range(1, 64)
#: A USB address is 7 bits; 0 is the default address (unaddressed, mid-reset).
USB_DEVICE_NUMBERS = range(1, 128)
#: bNbrPorts is one byte (the kernel refuses hubs of more than 31 ports).
USB_PORT_NUMBERS = range(1, 256)
#: MAX_TOPO_LEVEL in drivers/usb/core/hub.c: six tiers below the root hub.
USB_MAX_DEPTH = 6
#: USB_MAXINTERFACES (include/linux/usb.h).
USB_MAX_INTERFACES = 32
#: Group numbers come from an IDA, from 0 up: far below this on any machine.
IOMMU_GROUPS = range(0, 1 << 20)
#: MODULE_NAME_LEN is 56; driver names are shorter still.
MAX_DRIVER_NAME = 64
#: reset_method lists a handful of methods (pci_reset_fn_methods in pci.c).
_MAX_RESET_METHODS = 8

_DECIMAL = re.compile(r"[0-9]{1,10}")
_PORT = re.compile(r"([0-9]{1,3})-([0-9]{1,3}(?:\.[0-9]{1,3})*)")
#: The kernel's "%04x:%02x:%02x.%d": the domain may be wider (VMD uses 10000 and up).
_PCI_ADDRESS = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
_IOMMU_GROUP_LINK = re.compile(r"(?:.*/)?kernel/iommu_groups/([0-9]{1,10})")
_RESET_METHOD = re.compile(r"[a-z_]{1,32}")


def decimal(text: str, allowed: range) -> int | None:
    """A decimal number the kernel printed (``%d``, or ``%03d`` as udev's BUSNUM) in ``allowed``."""
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        return None
    value = int(text)
    return value if value in allowed else None


def hex_id(text: str, digits: int, padded: bool = True) -> str | None:
    """``0x8086``/``8086`` as exactly ``digits`` lower-case hex digits, or None.

    sysfs writes ``0x%04x`` (ids) and ``0x%06x`` (a PCI class), udev ``%04x``;
    ``padded=False`` also takes fewer digits and zero-fills them, for the
    uevent's PCI_CLASS (``%X``: ``C0330``). Longer, signed or other text is None.
    """
    text = text.strip().lower().removeprefix("0x")
    fewest = digits if padded else 1
    if not re.fullmatch(rf"[0-9a-f]{{{fewest},{digits}}}", text):
        return None
    return text.zfill(digits)


def usb_port(name: str) -> tuple[int, tuple[int, ...]] | None:
    """A USB device's kernel name ``B-P.P.P`` as (bus number, port numbers), or None."""
    m = _PORT.fullmatch(name)
    if m is None:
        return None
    bus = int(m[1])
    ports = tuple(int(p) for p in m[2].split("."))
    if (bus not in USB_BUS_NUMBERS or len(ports) > USB_MAX_DEPTH
            or any(p not in USB_PORT_NUMBERS for p in ports) or name != _port_name(bus, ports)):
        return None
    return bus, ports


def _port_name(bus: int, ports: tuple[int, ...]) -> str:
    """How the kernel names that place (no leading zeros): ``1-02`` is no kernel name."""
    return f"{bus}-" + ".".join(map(str, ports))


def pci_address(name: str) -> str | None:
    """``0000:03:00.0`` as the kernel names a PCI function, or None."""
    return name if _PCI_ADDRESS.fullmatch(name) else None


def iommu_group(link_target: str) -> int | None:
    """The group number from an ``iommu_group`` link (``../../../kernel/iommu_groups/7``)."""
    m = _IOMMU_GROUP_LINK.fullmatch(link_target)
    return decimal(m[1], IOMMU_GROUPS) if m else None


def iommu_group_name(name: str) -> int | None:
    """A directory name under /sys/kernel/iommu_groups as its group number, or None."""
    return decimal(name, IOMMU_GROUPS)


def driver_name(name: str) -> str:
    """A bound driver's name, kept as said but harmless and bounded.

    Never "" for a driver that is there (as long as ``name`` is not empty):
    "" means "no driver", which the safety checks count as harmless.
    """
    return clean(name, MAX_DRIVER_NAME) or (REPLACEMENT if name else "")


def reset_methods(text: str) -> str | None:
    """The methods of ``reset_method`` ("flr bus"; "" when empty), None if garbled.

    The reader takes a garbled file as no reset method (the blocking side).
    """
    words = text.split()
    if len(words) > _MAX_RESET_METHODS or not all(_RESET_METHOD.fullmatch(w) for w in words):
        return None
    return " ".join(words)


def shown(value: object, limit: int = 64) -> str:
    """A rejected value as a log line may quote it: cleaned, short, quoted."""
    return repr(clean(value if isinstance(value, bytes) else str(value), limit))


class ReportedOnce:
    """Which complaints were already logged, so a bad value read on every loop turn
    (or every event of its device) is told once; bounded by forgetting all at ``limit``."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._told: set[tuple[str, ...]] = set()

    def first(self, *key: str) -> bool:
        """True the first time ``key`` is seen (until the memory is full and forgotten)."""
        if key in self._told:
            return False
        if len(self._told) >= self._limit:
            self._told.clear()
        self._told.add(key)
        return True
