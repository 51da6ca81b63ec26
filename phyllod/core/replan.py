"""Replan: reconcile again only what changed since the last turn.

:func:`~phyllod.core.reconcile.reconcile` plans every present device each
turn; at 1,000 devices, 200 rules and 20 guests that is tens of milliseconds
for one plug. :func:`replan` returns the very same plan (assignments in the
same order, steps, wake-up, questions, binds let go; the property test in
``tests/unit/core/test_replan.py`` holds it to reconcile, the oracle) but
plans again only the devices whose plan may have changed, found by diffing
this turn's World against the copy the previous :class:`Reconciled` kept of
its own. What one device's plan reads, and so what makes it stale:

- the device itself, its first matching rule (kept while the device and the
  policy object are the same), the choices by its identity (override,
  remembered answer), by its id (the ask, vanished, inserted), by its slot
  (work in flight, its failure, a host driver's bind);
- who holds it (:mod:`phyllod.core.holdings_index`, by signature) and
  whether a stale hostdev holds its slot;
- the guest its decision names (by name or UUID: a guest that came, went or
  changed its state or run), the guest of its failure (by name), the guest of
  its bind (by UUID, its hostdevs too; a run libvirt said is ending shows
  there, as a stopping guest), and, for a device it asks about, every guest;
- the host facts, if its decision names a guest (the safety verdicts);
- the clock, if its plan set a wake-up (a backoff, a debounce window, the
  settle after resume: their reasons count the seconds down; the clock never
  goes back, or it starts over);
- the host's sleep (when it changes, every device is planned again);
- PCI devices (and any device with an IOMMU group) weigh each other (group
  mates going along, one attach per group at a time): when one of them may
  have changed, or a guest's run or state did, or the host facts, all of them
  are planned again, in reconcile's order.

The stale hostdevs are planned every turn (there are few). It starts over
(plans everything, keeping the matches it may) when there is nothing to build
on, the policy is another object (a reload: no match is kept), the clock went
back or the guests changed order. While libvirt is away or the policy is
broken, and for devices not keyed by their id, it returns reconcile's own
plan and keeps nothing. Pure: no clock, no I/O.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter

from phyllod.core.diff import changed_keys
from phyllod.core.guest_runs import HostBind, without_ending
from phyllod.core.holdings_index import HoldingsIndex, Moved
from phyllod.core.model import Ask, Assignment, Device, Guest, HostFacts, Override, Subsystem
from phyllod.core.plan import (
    Failure,
    Operation,
    Plan,
    Question,
    Sleep,
    Step,
    World,
    first_per_slot,
)
from phyllod.core.planner import Planner
from phyllod.core.policy import Policy, Rule
from phyllod.core.reconcile import reconcile


@dataclass(frozen=True, slots=True, kw_only=True)
class DevicePlan:
    """One device's share of a plan, and what it was planned from."""

    device: Device
    rule: Rule | None  # its first matching rule
    slot: str
    identity: str
    ref: str | None  # the guest its decision names, as given; None: it names none
    assignment: Assignment
    steps: tuple[Step, ...] = ()
    wakeups: tuple[float, ...] = ()
    questions: tuple[Question, ...] = ()
    let_go: tuple[str, ...] = ()

    @property
    def busy(self) -> bool:
        """Whether it adds more to the plan than its assignment."""
        return bool(self.steps or self.wakeups or self.questions or self.let_go)


@dataclass(frozen=True, slots=True, kw_only=True)
class Shares:
    """The busy devices' shares of the plan, merged in id order (steps: the first
    per slot)."""

    steps: tuple[Step, ...] = ()
    wake_at: float | None = None
    questions: tuple[Question, ...] = ()
    let_go: tuple[str, ...] = ()

    @classmethod
    def of(cls, busy: list[DevicePlan]) -> Shares:
        return cls(steps=first_per_slot(s for r in busy for s in r.steps),
                   wake_at=min((w for r in busy for w in r.wakeups), default=None),
                   questions=tuple(q for r in busy for q in r.questions),
                   let_go=tuple(s for r in busy for s in r.let_go))

    def plan(self, assignments: Mapping[str, Assignment], stale_steps: list[Step],
             stale_wakeups: list[float]) -> Plan:
        """The plan, the stale hostdevs' steps and wake-ups after the devices', as
        reconcile orders them (a slot keeps its first step)."""
        steps = self.steps
        if stale_steps:
            steps += first_per_slot(stale_steps, (s.slot for s in self.steps))
        wakeups = [*stale_wakeups, *(() if self.wake_at is None else (self.wake_at,))]
        return Plan(assignments=assignments, steps=steps,
                    wake_at=min(wakeups, default=None), questions=self.questions,
                    let_go=self.let_go)


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """A turn's inputs, as copies (the daemon's parts change theirs in place), and
    what was planned from them, indexed for the next turn's diff."""

    devices: Mapping[str, Device] = field(default_factory=dict)
    guests: Mapping[str, Guest] = field(default_factory=dict)  # as reconcile sees them
    inflight: Mapping[str, Operation] = field(default_factory=dict)
    failures: Mapping[str, Failure] = field(default_factory=dict)
    binds: Mapping[str, HostBind] = field(default_factory=dict)
    overrides: Mapping[str, Override] = field(default_factory=dict)
    remembered: Mapping[str, str] = field(default_factory=dict)
    asks: Mapping[str, Ask] = field(default_factory=dict)
    vanished: Mapping[str, float] = field(default_factory=dict)
    inserted: frozenset[str] = frozenset()
    sleep: Sleep | None = None
    host: HostFacts | None = None
    now: float = float("-inf")
    results: Mapping[str, DevicePlan] = field(default_factory=dict)
    holdings: HoldingsIndex = field(default_factory=HoldingsIndex)
    by_slot: Mapping[str, frozenset[str]] = field(default_factory=dict)
    by_identity: Mapping[str, frozenset[str]] = field(default_factory=dict)
    by_ref: Mapping[str, frozenset[str]] = field(default_factory=dict)  # by ref.lower()
    busy: frozenset[str] = frozenset()  # the ids whose DevicePlan is busy
    coupled: frozenset[str] = frozenset()  # PCI devices, and any with an IOMMU group
    assignments: Mapping[str, Assignment] = field(default_factory=dict)
    ids: tuple[str, ...] = ()  # the present devices' ids, sorted
    shares: Shares = field(default_factory=Shares)


_NOTHING = Seen()
#: Devices that came or went past which the ids are sorted afresh rather than
#: each put in its place (a start, a resync).
_RESORT = 32


@dataclass(frozen=True, slots=True)
class Reconciled:
    """A turn's plan (equal to ``reconcile(policy, world)``) and what the next turn
    builds on (None: nothing); ``planned`` counts the devices this turn planned."""

    plan: Plan
    policy: Policy | None
    seen: Seen | None = None
    planned: int = 0


def replan(previous: Reconciled | None, policy: Policy | None, world: World) -> Reconciled:
    """The plan for ``world``, planning again only what changed since ``previous``."""
    if world.guests is None or policy is None:
        return Reconciled(reconcile(policy, world), policy, None, len(world.devices))
    guests = without_ending(world.guests, world.ending)
    seen = previous.seen if previous is not None and previous.policy is policy else None
    kept = seen.results if seen is not None else {}
    if seen is None or world.now < seen.now or not _same_order(seen.guests, guests):
        seen = _NOTHING
    devices = dict(world.devices)
    moved = {i: (seen.devices.get(i), devices.get(i))
             for i in changed_keys(seen.devices, devices)}
    if any(after is not None and after.id != i for i, (_, after) in moved.items()):
        return Reconciled(reconcile(policy, world), policy, None, len(devices))
    return _Turn(seen, kept, policy, world, devices, guests, moved).reconciled()


def _same_order(old: Mapping[str, Guest], new: Mapping[str, Guest]) -> bool:
    """Whether the guests both have are in the same order (holders follow it)."""
    return [k for k in old if k in new] == [k for k in new if k in old]


def _head(g: Guest | None) -> tuple[str, str, str, int] | None:
    """A guest apart from its hostdevs (which only the holdings and binds read)."""
    return None if g is None else (g.name, g.uuid, g.state, g.run)


def _lookup(index: Mapping[str, frozenset[str]], keys: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for k in keys:
        out |= index.get(k, frozenset())
    return out


class _Index:
    """A key → ids index, copied on its first change (the last turn's stays as it was)."""

    def __init__(self, index: Mapping[str, frozenset[str]]) -> None:
        self.index = index
        self._own: dict[str, frozenset[str]] | None = None

    def move(self, device_id: str, old: str | None, new: str | None) -> None:
        if old == new:
            return
        if self._own is None:
            self._own = dict(self.index)
            self.index = self._own
        own = self._own
        if old is not None:
            left = own[old] - {device_id}
            if left:
                own[old] = left
            else:
                del own[old]
        if new is not None:
            own[new] = own.get(new, frozenset()) | {device_id}


def _lower(ref: str | None) -> str | None:
    return None if ref is None else ref.lower()


class _Turn:
    """One replan: the diff, the devices it makes stale, their planning, the plan."""

    def __init__(self, seen: Seen, kept: Mapping[str, DevicePlan], policy: Policy,
                 world: World, devices: dict[str, Device], guests: dict[str, Guest],
                 moved: Moved) -> None:
        self.seen, self.kept, self.policy, self.world = seen, kept, policy, world
        self.devices, self.guests, self.moved = devices, guests, moved
        self.gone = [i for i, (_, after) in moved.items() if after is None]
        self.came = any(before is None for before, _ in moved.values())
        self.changed_guests = changed_keys(seen.guests, guests)
        self.coupled = set(seen.coupled)
        for device_id, (_, after) in moved.items():
            self.coupled.discard(device_id)
            if after is not None and (after.subsystem is Subsystem.PCI
                                      or after.iommu_group is not None):
                self.coupled.add(device_id)

    def reconciled(self) -> Reconciled:
        seen, world = self.seen, self.world
        holdings, regrouped = seen.holdings.advance(self.devices, self.moved, self.guests,
                                                    self.changed_guests)
        copies, slots, ids, identities = self._inputs()
        order = sorted(self._stale(holdings, regrouped, slots, ids, identities))
        planner = self._planner(order, holdings)
        fresh = {device_id: self._plan(planner, device_id) for device_id in order}
        results, by_slot, by_identity, by_ref, busy = self._records(fresh)
        steps, wakeups = len(planner.steps), len(planner.wakeups)
        planner.stale(present=by_slot)
        ids, assignments = self._assignments(results, fresh)
        shares = self.seen.shares
        if busy != self.seen.busy or not busy.isdisjoint(fresh):
            shares = Shares.of([results[i] for i in sorted(busy)])
        plan = shares.plan(assignments, planner.steps[steps:], planner.wakeups[wakeups:])
        return Reconciled(plan, self.policy, Seen(
            devices=self.devices, guests=self.guests, inserted=world.inserted,
            sleep=world.sleep, host=world.host, now=world.now,
            results=results, holdings=holdings, by_slot=by_slot, by_identity=by_identity,
            by_ref=by_ref, busy=busy, coupled=frozenset(self.coupled),
            assignments=assignments, ids=ids, shares=shares, **copies), len(order))

    def _inputs(self) -> tuple[dict[str, Mapping[str, object]], set[str], set[str], set[str]]:
        """This turn's copies of the small mappings (the last turn's where equal), and
        the slots, ids and identities whose entries changed."""
        seen, world = self.seen, self.world
        copies: dict[str, Mapping[str, object]] = {}
        changed: dict[str, set[str]] = {}
        for name in ("inflight", "failures", "binds", "overrides", "remembered", "asks",
                     "vanished"):
            old, new = getattr(seen, name), getattr(world, name)
            changed[name] = changed_keys(old, new)
            copies[name] = dict(new) if changed[name] else old
        slots = changed["inflight"] | changed["failures"] | changed["binds"]
        ids = changed["asks"] | changed["vanished"] | (seen.inserted ^ world.inserted)
        return copies, slots, ids, changed["overrides"] | changed["remembered"]

    def _stale(self, holdings: HoldingsIndex, regrouped: set[str], slots: set[str],
               ids: set[str], identities: set[str]) -> set[str]:
        """The present devices whose plan may differ from the one ``seen`` keeps."""
        seen, world, coupled = self.seen, self.world, self.coupled
        if world.sleep != seen.sleep:
            return set(self.devices)
        dirty = set(self.moved) | regrouped | ids
        if holdings.stale is not seen.holdings.stale:
            slots |= ({h.hostdev.slot for h in holdings.stale}
                      ^ {h.hostdev.slot for h in seen.holdings.stale})
        pairs = [(seen.guests.get(n), self.guests.get(n)) for n in self.changed_guests]
        heads = [(n, old, new) for n, (old, new) in zip(self.changed_guests, pairs, strict=True)
                 if _head(old) != _head(new)]
        if heads:
            names = {n for n, _, _ in heads} | {g.name for _, *gs in heads for g in gs if g}
            refs = {n.lower() for n in names} | {
                g.uuid.lower() for _, *gs in heads for g in gs if g}
            dirty |= _lookup(seen.by_ref, refs)
            slots |= {s for s, f in world.failures.items() if f.guest in names}
            dirty |= {i for i in seen.busy if seen.results[i].questions}
        # A run libvirt said is ending shows here as its guest stopping: a bind's
        # verdict changes only with the guest of its UUID.
        uuids = {g.uuid for old, new in pairs for g in (old, new) if g is not None}
        slots |= {s for s, b in world.binds.items() if b.run.uuid in uuids}
        if world.now != seen.now:
            dirty |= {i for i in seen.busy if seen.results[i].wakeups}
        host_changed = world.host is not seen.host and world.host != seen.host
        if host_changed:
            dirty |= _lookup(seen.by_ref, seen.by_ref.keys())
        dirty |= _lookup(seen.by_slot, slots) | _lookup(seen.by_identity, identities)
        if coupled and (heads or host_changed or not dirty.isdisjoint(coupled | seen.coupled)):
            dirty |= coupled
        return dirty & self.devices.keys()

    def _planner(self, order: list[str], holdings: HoldingsIndex) -> Planner:
        """A planner for the devices in ``order``, with their matches kept where the
        device is the same; the PCI devices if it plans any of them."""
        devices, kept, coupled = self.devices, self.kept, self.coupled
        rules = {}
        for device_id in order:
            d, before = devices[device_id], kept.get(device_id)
            same = before is not None and (before.device is d or before.device == d)
            rules[device_id] = before.rule if same and before else self.policy.match(d)
        pci = ([devices[i] for i in sorted(coupled) if devices[i].subsystem is Subsystem.PCI]
               if not coupled.isdisjoint(order) else [])
        return Planner(self.policy, self.world, self.guests, holdings=holdings, rules=rules,
                       pci=pci)

    def _plan(self, planner: Planner, device_id: str) -> DevicePlan:
        """Plan one device, and keep its share of the plan apart."""
        d, before = self.devices[device_id], self.kept.get(device_id)
        counts = (len(planner.steps), len(planner.wakeups), len(planner.questions),
                  len(planner.let_go))
        assignment = planner.device(d)
        same = before is not None and before.device is d
        return DevicePlan(
            device=d, rule=planner.rules[device_id],
            slot=before.slot if same and before else d.slot,
            identity=before.identity if same and before else d.identity,
            ref=planner.decisions[device_id].guest, assignment=assignment,
            steps=tuple(planner.steps[counts[0]:]), wakeups=tuple(planner.wakeups[counts[1]:]),
            questions=tuple(planner.questions[counts[2]:]),
            let_go=tuple(planner.let_go[counts[3]:]))

    def _records(self, fresh: dict[str, DevicePlan]) -> tuple[
            Mapping[str, DevicePlan], Mapping[str, frozenset[str]], Mapping[str, frozenset[str]],
            Mapping[str, frozenset[str]], frozenset[str]]:
        """Every present device's share (the kept ones and the ``fresh``), and the
        indexes over them: by slot, by identity, by guest named, the busy ones."""
        seen = self.seen
        if not fresh and not self.gone:
            return seen.results, seen.by_slot, seen.by_identity, seen.by_ref, seen.busy
        results = dict(seen.results)
        by_slot, by_identity = _Index(seen.by_slot), _Index(seen.by_identity)
        by_ref, busy = _Index(seen.by_ref), set(seen.busy)
        changes = [(i, results.pop(i), None) for i in self.gone if i in results]
        changes += [(i, results.get(i), new) for i, new in fresh.items()]
        for device_id, old, new in changes:
            by_slot.move(device_id, old and old.slot, new and new.slot)
            by_identity.move(device_id, old and old.identity, new and new.identity)
            by_ref.move(device_id, _lower(old and old.ref), _lower(new and new.ref))
            if new is not None:
                results[device_id] = new
            if new is not None and new.busy:
                busy.add(device_id)
            else:
                busy.discard(device_id)
        return results, by_slot.index, by_identity.index, by_ref.index, frozenset(busy)

    def _assignments(self, results: Mapping[str, DevicePlan], fresh: dict[str, DevicePlan]
                     ) -> tuple[tuple[str, ...], Mapping[str, Assignment]]:
        """The sorted ids, and the assignments by id in that order (as reconcile sorts
        them): the last turn's with this turn's changes, rebuilt if devices came."""
        seen = self.seen
        ids = seen.ids
        if len(self.moved) > _RESORT:
            ids = tuple(sorted(self.devices))
        elif self.came or self.gone:
            order = list(ids)
            for device_id in self.gone:
                del order[bisect_left(order, device_id)]
            for device_id, (before, _) in self.moved.items():
                if before is None:
                    insort(order, device_id)
            ids = tuple(order)
        if self.came:
            return ids, dict(zip(ids, map(attrgetter("assignment"), map(results.__getitem__, ids)),
                                 strict=True))
        changed = {i: r.assignment for i, r in fresh.items()
                   if r.assignment != seen.assignments[i]}
        if not changed and not self.gone:
            return ids, seen.assignments
        assignments = {**seen.assignments, **changed}
        for device_id in self.gone:
            del assignments[device_id]
        return ids, assignments
