"""The vocabulary every part of phyllod speaks: devices, guests, assignments.

All values are frozen dataclasses so the core can compare snapshots, keep them
in sets and pass them between the event loop and the libvirt worker without
copies or locks. Adapters translate to and from these; nothing here imports an
adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

#: Prefix of the libvirt user alias (``ua-`` is libvirt's namespace for
#: user-chosen aliases) that marks a hostdev phyllod placed. Ownership is thus
#: read back from libvirt after a restart instead of living in our memory.
ALIAS_PREFIX = "ua-phyllod-"


class Subsystem(StrEnum):
    USB = "usb"
    PCI = "pci"


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    """A host device's identity, as udev and sysfs describe it.

    ``port`` (USB) and ``address`` (PCI) are physical and survive a replug;
    ``busnum``/``devnum`` change on every enumeration and only serve to name
    the device to libvirt and to recognise it in a guest's live XML.
    ``peer_ports`` are the other names of the same physical port: a USB 3
    port is two ports (its USB 2 half on one bus, its SuperSpeed half on
    another), which the kernel links as peers; a rule on either half covers
    both. ``manufacturer``/``product_name`` are what the device says of
    itself; ``vendor_db``/``model_db`` are udev's hardware database names for
    its ids (what lspci and lsusb show), for devices that say nothing (every
    PCI function, many USB ones). ``serial_doubt`` says why the serial cannot
    tell this device from others (a placeholder, a twin present); the
    identity then falls back to the port (see :mod:`phyllod.core.serial_trust`).
    ``serial_twins`` are the ids of the other present devices with the same
    vendor:product and (real, not placeholder) serial.
    """

    subsystem: Subsystem
    sys_path: str
    port: str = ""
    busnum: int = 0
    devnum: int = 0
    vendor: str = ""
    product: str = ""
    serial: str = ""
    manufacturer: str = ""
    product_name: str = ""
    device_class: str = ""
    interface_classes: tuple[str, ...] = ()
    address: str = ""
    iommu_group: int | None = None
    driver: str = ""
    peer_ports: tuple[str, ...] = ()
    vendor_db: str = ""
    model_db: str = ""
    serial_doubt: str = ""
    serial_twins: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """Stable key: the physical place of the device (``usb:1-2.3``)."""
        where = self.port if self.subsystem is Subsystem.USB else self.address
        return f"{self.subsystem}:{where}"

    @property
    def slot(self) -> str:
        """The alias stem for this physical place (``ua-phyllod-usb1-2_3``).

        Work on one slot is serialized, whichever enumeration it concerns.
        """
        where = self.port if self.subsystem is Subsystem.USB else self.address
        safe = where.replace(".", "_").replace(":", "_")
        return f"{ALIAS_PREFIX}{self.subsystem}{safe}"

    @property
    def alias(self) -> str:
        """The libvirt alias phyllod gives this enumeration of the device.

        The device number is part of it so that a replugged device never
        collides with the stale hostdev of its previous enumeration.
        """
        return f"{self.slot}-{self.devnum}"

    @property
    def is_hub(self) -> bool:
        """A USB hub (class 09): it routes; what is behind it is what people pass."""
        return self.subsystem is Subsystem.USB and self.device_class == "09"

    @property
    def identity(self) -> str:
        """What a person means by "this device", for choices that outlive a replug.

        A serial number follows the device to any port (``usb:1050:0407:123``);
        without one, or with a placeholder (``serial_doubt``), the physical
        place is all that tells identical devices apart (``usb:1-2``). While
        twins share a real serial, each is that serial at its port
        (``usb:1050:0407:123@1-2``): the key says whose choice it is, so the
        choice goes back under the serial when the twin leaves, after a
        restart too, and never to another device later plugged into the port.
        """
        if self.subsystem is Subsystem.USB and self.serial:
            if not self.serial_doubt:
                return self.serial_identity
            if self.serial_twins:
                return self.serial_at_port
        return self.id

    @property
    def serial_identity(self) -> str:
        """The identity by serial alone (what it is when no twin is present)."""
        return f"usb:{self.vendor}:{self.product}:{self.serial}"

    @property
    def serial_at_port(self) -> str:
        """The identity while a twin shares the serial: the serial at this port."""
        return f"{self.serial_identity}@{self.port}"

    def describe(self) -> str:
        """One line a person recognises the device by."""
        ids = f"{self.vendor}:{self.product}"
        name = self.name
        return f"{self.id} ({ids}{' ' + name if name else ''})"

    @property
    def name(self) -> str:
        """The device's own strings; failing those, the hardware database's names."""
        own = " ".join(s for s in (self.manufacturer, self.product_name) if s)
        return own or " ".join(s for s in (self.vendor_db, self.model_db) if s)


class GuestState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    #: Shut down, its QEMU not yet gone: it is letting go of its devices.
    STOPPING = "stopping"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    SUSPENDED = "pmsuspended"
    OTHER = "other"

    @property
    def active(self) -> bool:
        """Whether its QEMU runs and keeps the devices it holds (a stopping one lets go)."""
        return self in (GuestState.RUNNING, GuestState.PAUSED, GuestState.SUSPENDED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hostdev:
    """A USB or PCI ``<hostdev>`` as found in a guest's live XML.

    USB: any of the fields may be missing (libvirt accepts ids only, or an
    address only). PCI: ``address`` is the host function (``0000:03:00.0``).
    ``alias`` is libvirt's ``<alias name=…>``.
    """

    alias: str
    vendor: str = ""
    product: str = ""
    bus: int | None = None
    device: int | None = None
    subsystem: Subsystem = Subsystem.USB
    address: str = ""

    @property
    def owned(self) -> bool:
        """Placed by phyllod (carries our user alias)."""
        return self.alias.startswith(ALIAS_PREFIX)

    @property
    def slot(self) -> str:
        """For an owned hostdev, the slot of the device it was made for."""
        return self.alias.rsplit("-", 1)[0] if self.owned else self.alias


@dataclass(frozen=True, slots=True, kw_only=True)
class Guest:
    name: str
    uuid: str
    state: GuestState
    hostdevs: tuple[Hostdev, ...] = ()
    #: libvirt's domain id: a new one at every start (-1 while not running), so
    #: it tells one run of the guest from the next.
    run: int = 0


def find_guest(ref: str, guests: Mapping[str, Guest]) -> Guest | None:
    """The guest ``ref`` designates, by name first, then by UUID."""
    if ref in guests:
        return guests[ref]
    for g in guests.values():
        if g.uuid.lower() == ref.lower():
            return g
    return None


class State(StrEnum):
    HOST = "host"
    PENDING = "pending"
    SLEEPING = "sleeping"  # taken back for the host's sleep; returns after resume
    ASKING = "asking"
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """Where a device is, or is going, and why: the answer to "explain"."""

    device_id: str
    state: State
    guest: str = ""
    rule: str = ""
    reason: str = ""


class OverrideKind(StrEnum):
    ATTACH = "attach"
    HOST = "host"


@dataclass(frozen=True, slots=True)
class Override:
    """A person's explicit choice for a device, which wins over policy (not over deny).

    ``guest`` is the name or UUID given for an ``attach``; it is kept as given
    so that a guest defined later (or renamed back) is still found.
    """

    kind: OverrideKind
    guest: str = ""


class AskOutcome(StrEnum):
    PENDING = "pending"  # a request is open
    ANSWERED = "answered"
    EXPIRED = "expired"  # no answer before the deadline
    UNASKED = "unasked"  # plugged in while none of the candidate guests was running


@dataclass(frozen=True, slots=True)
class Ask:
    """Where the question about one plug of a device stands (keyed by ``Device.id``).

    It lives as long as the plug: an unplug or a re-enumeration forgets it, so
    an answer without ``remember`` applies to this plug only.
    """

    outcome: AskOutcome
    guest: str = ""  # ANSWERED: the guest, "" for the host
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """An open question to the person at the machine, as the bus shows it."""

    number: int  # /me/phyllo/Phyllod1/requests/<number>, counted per daemon run
    device_id: str
    description: str
    candidates: tuple[str, ...]
    deadline_usec: int  # CLOCK_REALTIME, microseconds
    rule: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PciFunction:
    """One PCI function as sysfs shows it: what the passthrough safety check weighs."""

    address: str  # 0000:03:00.0
    vendor: str = ""  # 4 hex digits
    device: str = ""
    class_code: str = ""  # 6 hex digits: 020000 Ethernet, 0c0330 xHCI, 060400 bridge
    driver: str = ""  # "" when no driver is bound
    iommu_group: int | None = None
    boot_vga: bool = False
    #: The kernel's reset_method ("flr bus", …); "" when it has none (or a person
    #: disabled them all); None when the kernel is too old to say (before 5.15).
    reset_method: str | None = None
    #: Whether the kernel shows ``reset_method`` or ``reset`` at all: it does for a
    #: function it found a reset for, so with "" above False means "none found",
    #: True "all disabled by a person".
    reset_shown: bool = True
    #: The upstream bridge's address: the function sits on that bridge's
    #: secondary bus, with every other function whose ``parent`` is the same.
    #: "" on a root bus, which no bridge can reset.
    parent: str = ""

    @property
    def is_bridge(self) -> bool:
        """PCI bridges and PCIe ports (class 06xx): they route, they are never passed."""
        return self.class_code.startswith("06")


class FactsPart(StrEnum):
    """The host facts in parts, each read again only once something made it stale
    (what makes which part stale: :func:`phyllod.service.loop.staled_by`)."""

    #: The PCI functions, IOMMU groups, the IOMMU itself and the ACS override:
    #: what a PCI uevent (a function come or gone, a driver bound) changes.
    PCI = "pci"
    #: What the host holds: mounted and swapped-on block devices and its
    #: keyboards, which a USB device (a stick, a keyboard, a hub) brings or takes.
    HOLDS = "holds"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFacts:
    """What the host's kernel says about IOMMU isolation, read from sysfs and /proc."""

    iommu_enabled: bool = False
    #: pcie_acs_override= is on the kernel command line and the kernel applies it
    #: (or cannot be shown to ignore it).
    acs_override: bool = False
    functions: Mapping[str, PciFunction] = field(default_factory=dict)
    groups: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    #: PCI address → what the host has mounted from it ("/ (nvme0n1p2)").
    mounted: Mapping[str, str] = field(default_factory=dict)
    #: sysfs path (/sys/devices/…) of each mounted or swapped-on block device and
    #: of those it is built on → what is mounted ("/media/stick (sdb1)"): a USB
    #: device carries every entry whose path lies below its own.
    block_mounts: Mapping[str, str] = field(default_factory=dict)
    #: sysfs path of each of the host's keyboards (input devices, not virtual)
    #: → its name: a hub or controller above all of them takes the only keyboard.
    keyboards: Mapping[str, str] = field(default_factory=dict)
    #: pcie_acs_override= is on the command line but this kernel lacks the
    #: out-of-tree patch that reads it: groups are the hardware's own.
    acs_override_ignored: bool = False

    def merged(self, fresh: HostFacts, parts: Iterable[FactsPart]) -> HostFacts:
        """These facts with ``parts`` taken from ``fresh`` (read for those parts only)."""
        return replace(self, **{name: getattr(fresh, name) for part in parts
                                for name in PART_FIELDS[part]})


#: Which of HostFacts' fields each part holds; together, all of them.
PART_FIELDS: Mapping[FactsPart, tuple[str, ...]] = {
    FactsPart.PCI: ("iommu_enabled", "acs_override", "acs_override_ignored", "functions",
                    "groups"),
    FactsPart.HOLDS: ("mounted", "block_mounts", "keyboards"),
}
ALL_PARTS = frozenset(FactsPart)
