"""The holdings, kept from turn to turn: only what a change can move is resolved again.

:class:`~phyllod.core.holdings.Holdings` resolves every hostdev of every
running guest against every present device, which at 1,000 devices costs
half a millisecond a turn, most of it indexing devices that did not change.
:class:`HoldingsIndex` gives the same answers (each device's holders in guest
then hostdev order, the stale hostdevs likewise) and, when devices or guests
change, resolves again only the hostdevs of the guests that changed and of
the guests whose hostdevs name a key a changed device had or has: its bus and
device number, its vendor and product (a hostdev by ids only), its PCI
address. Two present devices with one bus and device number (a device that
vanished and one that took its recycled number) resolve as in Holdings, the
later in the snapshot winning; since the snapshot's order can change alone,
hostdevs naming such a key are resolved again every turn. A device's holders
are rebuilt when they change as :func:`signature` sees them (the guests'
names and UUIDs, the hostdevs): what the planner reads of them. So a holding
may carry an earlier value of its guest (same name and UUID, another state or
other hostdevs) until then.

An index is never changed once built: :meth:`HoldingsIndex.advance` returns a
new one that shares what did not change, so a turn's result stays valid for
as long as anyone holds it. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from phyllod.core.holdings import Holding, numbered_is
from phyllod.core.model import Device, Guest, Hostdev, Subsystem

#: What resolves a hostdev: ("a", bus, device), ("i", vendor, product), ("p", address, "").
Key = tuple[str, int | str, int | str]
#: What moved between two snapshots of the devices, by id: (before, after), None if absent.
Moved = Mapping[str, tuple[Device | None, Device | None]]


def device_keys(d: Device) -> tuple[Key, ...]:
    """The keys a hostdev may name ``d`` by (as Holdings indexes it)."""
    if d.subsystem is Subsystem.USB:
        return (("a", d.busnum, d.devnum), ("i", d.vendor, d.product))
    return (("p", d.address, ""),)


def hostdev_key(h: Hostdev) -> Key:
    """The key ``h`` names its device by (as Holdings resolves it)."""
    if h.subsystem is Subsystem.PCI:
        return ("p", h.address, "")
    if h.bus is not None and h.device is not None:
        return ("a", h.bus, h.device)
    return ("i", h.vendor, h.product)


def signature(held: Sequence[Holding]) -> tuple[tuple[str, str, Hostdev], ...]:
    """What the planner reads of a device's holders: each guest's name and UUID, and
    the hostdev (not the rest of the guest, whose other hostdevs do not concern it)."""
    return tuple((h.guest.name, h.guest.uuid, h.hostdev) for h in held)


@dataclass(frozen=True, slots=True)
class _Guest:
    """One active guest's hostdevs, resolved: to a device id each (None: none present),
    its holdings by device id, and its stale hostdevs, in hostdev order."""

    resolved: tuple[str | None, ...]
    held: Mapping[str, tuple[Holding, ...]]
    stale: tuple[Holding, ...]

    @classmethod
    def of(cls, g: Guest, resolved: tuple[str | None, ...]) -> _Guest:
        held: dict[str, list[Holding]] = {}
        stale = []
        for h, device_id in zip(g.hostdevs, resolved, strict=True):
            if device_id is not None:
                held.setdefault(device_id, []).append(Holding(g, h))
            elif h.owned:
                stale.append(Holding(g, h))
        return cls(resolved, {i: tuple(v) for i, v in held.items()}, tuple(stale))


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldingsIndex:
    """Who holds each present device, and the stale hostdevs (see the module)."""

    #: The guests as reconcile sees them (by name), and the devices' keys (→ ids).
    guests: Mapping[str, Guest] = field(default_factory=dict)
    present: Mapping[Key, frozenset[str]] = field(default_factory=dict)
    #: Bus and device numbers that two or more present devices have.
    collisions: frozenset[Key] = frozenset()
    #: Each active guest's hostdevs, resolved.
    active: Mapping[str, _Guest] = field(default_factory=dict)
    #: Which active guests have a hostdev naming each key.
    watched: Mapping[Key, frozenset[str]] = field(default_factory=dict)
    holders: Mapping[str, tuple[Holding, ...]] = field(default_factory=dict)
    stale: tuple[Holding, ...] = ()

    @classmethod
    def build(cls, devices: Mapping[str, Device], guests: Mapping[str, Guest]) -> HoldingsIndex:
        return cls().advance(devices, {i: (None, d) for i, d in devices.items()}, guests,
                             guests.keys())[0]

    def advance(self, devices: Mapping[str, Device], moved: Moved, guests: Mapping[str, Guest],
                changed_guests: Iterable[str]) -> tuple[HoldingsIndex, set[str]]:
        """The index for ``devices`` and ``guests``, which differ from this one's by the
        devices that ``moved`` and the guests ``changed_guests`` names; and the ids of
        the devices whose holders (as :func:`signature` sees them) changed.

        The guests' order must be the same as before for those in both (the caller
        starts over when it is not).
        """
        present, collisions, touched = self._moved_keys(moved)
        redo = set(changed_guests)
        partly: dict[str, set[Key]] = {}  # unchanged guests: the keys to resolve again
        for key in touched | collisions:
            for name in self.watched.get(key, frozenset()) - redo:
                partly.setdefault(name, set()).add(key)
        resolve = _Resolver(devices, present)
        active = dict(self.active)
        watched = dict(self.watched)
        for name in redo:
            self._rewatch(watched, name, guests.get(name))
            g = guests.get(name)
            if g is not None and g.state.active:
                active[name] = _Guest.of(g, tuple(resolve(h) for h in g.hostdevs))
            else:
                active.pop(name, None)
        affected: set[str] = set()
        for name, keys in partly.items():
            g, before = guests[name], active[name]
            resolved = tuple(resolve(h) if hostdev_key(h) in keys else was
                             for h, was in zip(g.hostdevs, before.resolved, strict=True))
            if resolved != before.resolved:
                active[name] = _Guest.of(g, resolved)
                affected.update(i for pair in zip(before.resolved, resolved, strict=True)
                                if pair[0] != pair[1] for i in pair if i is not None)
        for name in redo:
            affected |= _moved_holdings(self.active.get(name), active.get(name))
        if not affected and all(active.get(n) is self.active.get(n)
                                for n in redo | partly.keys()):
            return (HoldingsIndex(guests=guests, present=present, collisions=collisions,
                                  active=self.active, watched=watched, holders=self.holders,
                                  stale=self.stale), set())
        order = [active[n] for n in guests if n in active]
        holders = dict(self.holders)
        for device_id in affected:
            held = tuple(h for record in order for h in record.held.get(device_id, ()))
            if held:
                holders[device_id] = held
            else:
                holders.pop(device_id, None)
        stale = tuple(h for record in order for h in record.stale)
        changed = {i for i in affected
                   if signature(self.holders.get(i, ())) != signature(holders.get(i, ()))}
        return (HoldingsIndex(guests=guests, present=present, collisions=collisions,
                              active=active, watched=watched, holders=holders,
                              stale=stale), changed)

    def _rewatch(self, watched: dict[Key, frozenset[str]], name: str, g: Guest | None) -> None:
        """``watched`` once guest ``name`` is ``g`` (None: gone) instead of as before."""
        before = self.guests.get(name) if name in self.active else None
        old = {hostdev_key(h) for h in before.hostdevs} if before is not None else set()
        new = {hostdev_key(h) for h in g.hostdevs} if g is not None and g.state.active else set()
        for key in old - new:
            left = watched[key] - {name}
            if left:
                watched[key] = left
            else:
                del watched[key]
        for key in new - old:
            watched[key] = watched.get(key, frozenset()) | {name}

    def _moved_keys(self, moved: Moved) -> tuple[Mapping[Key, frozenset[str]], frozenset[Key],
                                                 set[Key]]:
        """The devices' keys once ``moved`` applied, the colliding bus and device
        numbers, and the keys whose devices changed."""
        touched: set[Key] = set()
        if not moved:
            return self.present, self.collisions, touched
        present = dict(self.present)
        for device_id, (before, after) in moved.items():
            old = device_keys(before) if before is not None else ()
            new = device_keys(after) if after is not None else ()
            if old == new:
                continue  # named by the same keys: it resolves as before
            for key in old:
                left = present[key] - {device_id}
                if left:
                    present[key] = left
                else:
                    del present[key]
            for key in new:
                present[key] = present.get(key, frozenset()) | {device_id}
            touched.update(old, new)
        collisions = (self.collisions - touched) | {
            k for k in touched if k[0] == "a" and len(present.get(k, ())) > 1}
        return present, frozenset(collisions), touched


def _moved_holdings(before: _Guest | None, after: _Guest | None) -> set[str]:
    """The devices whose holdings in one guest differ between two of its records (by
    :func:`signature`)."""
    if before is after:
        return set()
    if before is None or after is None:
        return set(before.held if before is not None else after.held if after else ())
    return {i for i in before.held.keys() | after.held.keys()
            if signature(before.held.get(i, ())) != signature(after.held.get(i, ()))}


class _Resolver:
    """Which present device a hostdev refers to, exactly as Holdings decides it."""

    def __init__(self, devices: Mapping[str, Device],
                 present: Mapping[Key, frozenset[str]]) -> None:
        self.devices = devices
        self.present = present
        self._positions: dict[str, int] | None = None

    def _later(self) -> Callable[[str], int]:
        """The position of an id in the snapshot (made once, when two devices collide)."""
        if self._positions is None:
            self._positions = {i: n for n, i in enumerate(self.devices)}
        return self._positions.__getitem__

    def __call__(self, h: Hostdev) -> str | None:
        key = hostdev_key(h)
        ids = self.present.get(key)
        if not ids:
            return None
        if key[0] == "i":
            return next(iter(ids)) if len(ids) == 1 else None
        device_id = next(iter(ids)) if len(ids) == 1 else max(ids, key=self._later())
        if key[0] == "p":
            return device_id
        return device_id if numbered_is(h, self.devices[device_id]) else None
