"""Which present device each hostdev in a running guest refers to.

Ownership is read from the snapshot, not remembered: a hostdev carrying
phyllod's alias was placed by phyllod and may be removed by it; any other
hostdev was placed by a person. A USB hostdev names its device by bus and
device number (which change on every plug) or by ids only; a PCI one by the
function's address. An owned hostdev that refers to no present device is
stale: its device is gone, or came back with a new number.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from phyllod.core.model import Device, Guest, Hostdev, Subsystem


@dataclass(frozen=True, slots=True)
class Holding:
    """A guest holding a hostdev."""

    guest: Guest
    hostdev: Hostdev


def numbered_is(h: Hostdev, d: Device) -> bool:
    """Whether a USB hostdev that names a bus and device number refers to ``d``, the
    device with that number: its ids, if given, are ``d``'s, and an owned hostdev
    names the slot it was made for (a device that re-enumerated elsewhere with a
    recycled number is not it)."""
    if (h.vendor and h.vendor != d.vendor) or (h.product and h.product != d.product):
        return False
    return not h.owned or h.slot == d.slot


class Held(Protocol):
    """What the planner reads of the holdings: built afresh (:class:`Holdings`) or
    kept up to date from turn to turn (:mod:`phyllod.core.holdings_index`)."""

    @property
    def holders(self) -> Mapping[str, Sequence[Holding]]: ...

    @property
    def stale(self) -> Sequence[Holding]: ...


class Holdings:
    """The holdings of running guests, by the present device each refers to."""

    def __init__(self, devices: Mapping[str, Device], guests: Mapping[str, Guest]) -> None:
        self.by_address: dict[tuple[int, int], Device] = {}
        self.by_pci_address: dict[str, Device] = {}
        by_ids: dict[tuple[str, str], list[Device]] = defaultdict(list)
        for d in devices.values():
            if d.subsystem is Subsystem.USB:
                self.by_address[(d.busnum, d.devnum)] = d
                by_ids[(d.vendor, d.product)].append(d)
            else:
                self.by_pci_address[d.address] = d
        self.by_ids = by_ids
        #: By ``Device.id``: who holds each present device.
        self.holders: dict[str, list[Holding]] = defaultdict(list)
        #: Owned hostdevs whose device is not present (gone, or replugged).
        self.stale: list[Holding] = []
        for g in guests.values():
            if not g.state.active:
                continue
            for h in g.hostdevs:
                d = self._resolve(h)
                if d is not None:
                    self.holders[d.id].append(Holding(g, h))
                elif h.owned:
                    self.stale.append(Holding(g, h))

    def _resolve(self, h: Hostdev) -> Device | None:
        if h.subsystem is Subsystem.PCI:
            return self.by_pci_address.get(h.address)
        if h.bus is not None and h.device is not None:
            d = self.by_address.get((h.bus, h.device))
            return d if d is not None and numbered_is(h, d) else None
        candidates = self.by_ids.get((h.vendor, h.product), [])
        return candidates[0] if len(candidates) == 1 else None
