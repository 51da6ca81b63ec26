"""The bus's object tree publishes incrementally, and what it keeps does not grow.

The oracle: after every publish of a random sequence of events (plugs, unplugs,
assignments, guests, choices, as the daemon's parts make them: the devices'
mapping changed in place, a new assignments mapping when one changes), the
tree shows exactly what a fresh tree publishing the same snapshot shows, and
GetManagedObjects' answer is the same. The counts: only the objects that
changed are marshalled again; after 10,000 events, back in the state of the
warm-up, every structure the tree keeps has the same size and the number of
live objects is the same (a margin for the interpreter's own caches).
"""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass, field, replace
from typing import Any

from factories import guest, usb

from phyllod.bus.interfaces import ManagerInterface
from phyllod.bus.objects import ObjectTree, Snapshot, Stats
from phyllod.contract import ROOT
from phyllod.core.model import (
    Assignment,
    Device,
    Guest,
    GuestState,
    Override,
    OverrideKind,
    Request,
    State,
)

PORTS = [f"1-{n}" for n in range(1, 25)]
GUESTS = ["work", "games", "router"]


class FakeBus:
    """What the tree uses of a connection: exports, counted."""

    connected = True

    def __init__(self) -> None:
        self.exported: set[str] = set()

    def export(self, path: str, interface: Any) -> None:
        assert path not in self.exported, path
        self.exported.add(path)

    def unexport(self, path: str) -> None:
        self.exported.remove(path)


@dataclass
class World:
    """The daemon's parts' state, changed the way they change it."""

    rng: random.Random
    devices: dict[str, Device] = field(default_factory=dict)
    assignments: dict[str, Assignment] = field(default_factory=dict)
    guests: dict[str, Guest] = field(default_factory=dict)
    overrides: dict[str, Override] = field(default_factory=dict)
    requests: dict[int, Request] = field(default_factory=dict)
    devnum: int = 2

    def __post_init__(self) -> None:
        self.guests = {g.name: g for g in map(guest, GUESTS)}

    def snapshot(self) -> Snapshot:
        return Snapshot(
            devices=self.devices, assignments=self.assignments, guests=self.guests,
            overrides=self.overrides, version="0-test", iommu_enabled=True,
            policy_errors=(), policy_files=(), libvirt_uri="test:///default",
            remembered={}, requests=self.requests, ask_timeout=30)

    def step(self) -> None:
        """One event."""
        rng = self.rng
        kind = rng.random()
        port = rng.choice(PORTS)
        device_id = f"usb:{port}"
        if kind < 0.45:  # a plug or an unplug (the devices' mapping changes in place)
            if device_id in self.devices:
                del self.devices[device_id]
                self.assignments = {k: a for k, a in self.assignments.items()
                                    if k != device_id}
                self.requests = {n: r for n, r in self.requests.items()
                                 if r.device_id != device_id}
            else:
                self.devnum = self.devnum % 120 + 2
                self.devices[device_id] = usb(port, devnum=self.devnum, serial=f"S{port}")
        elif kind < 0.8 and device_id in self.devices:  # a decision
            state = rng.choice([State.HOST, State.ATTACHING, State.ATTACHED, State.DETACHING,
                                State.DENIED, State.FAILED])
            to = rng.choice(GUESTS) if state not in (State.HOST, State.DENIED) else ""
            self.assignments = {**self.assignments, device_id: Assignment(
                device_id=device_id, state=state, guest=to, rule="r", reason=f"{state}")}
        elif kind < 0.9:  # a guest changes state
            name = rng.choice(GUESTS)
            self.guests = dict(self.guests)
            self.guests[name] = replace(self.guests[name], state=rng.choice(
                [GuestState.RUNNING, GuestState.SHUTOFF, GuestState.PAUSED]))
        elif kind < 0.95 and device_id in self.devices:  # a person's choice
            identity = self.devices[device_id].identity
            if identity in self.overrides:
                del self.overrides[identity]
            else:
                self.overrides[identity] = Override(OverrideKind.HOST)
        elif device_id in self.devices:  # a question opens or closes
            number = PORTS.index(port) + 1
            self.requests = dict(self.requests)
            if number in self.requests:
                del self.requests[number]
            else:
                self.requests[number] = Request(number=number, device_id=device_id,
                                                description="a device", candidates=("work",),
                                                deadline_usec=0)


def exported(tree: ObjectTree) -> dict[str, dict[str, Any]]:
    objects = {**tree.devices, **tree.guests, **tree.requests}
    assert tree.manager is not None
    return {ROOT: tree.manager.values, **{p: o.values for p, o in objects.items()}}


def fresh(s: Snapshot) -> ObjectTree:
    tree = ObjectTree(Stats())
    tree.export(FakeBus(), ManagerInterface(None, {}), s)  # type: ignore[arg-type]
    return tree


def test_each_publish_shows_what_a_fresh_tree_shows_and_marshals_only_what_changed() -> None:
    world = World(random.Random(18))
    bus = FakeBus()
    tree = ObjectTree(Stats())
    tree.export(bus, ManagerInterface(None, {}), world.snapshot())  # type: ignore[arg-type]
    for _ in range(300):
        world.step()
        before = exported(tree)
        marshalled = tree.objects.marshalled
        tree.publish(world.snapshot())
        oracle = fresh(world.snapshot())
        now = exported(tree)
        assert now == exported(oracle)
        assert bus.exported == set(now)
        # Each object's entry of GetManagedObjects, byte for byte (their order may
        # differ: a device that came back comes last; test_managed checks the join).
        assert {p: tree.objects.entry(p) for p in now} == \
            {p: oracle.objects.entry(p) for p in now}
        changed = {p for p, v in now.items() if before.get(p) != v}
        assert tree.objects.marshalled - marshalled == len(changed)


def _kept(tree: ObjectTree) -> dict[str, int]:
    """The size of every structure the tree keeps."""
    sizes = {name: len(value) for name, value in vars(tree).items()
             if isinstance(value, (dict, set, list))}
    sizes["held"] = sum(map(len, tree._held.values()))
    sizes["entries"] = len(tree.objects)
    return sizes


def test_ten_thousand_events_leave_nothing_behind() -> None:
    world = World(random.Random(7))
    tree = ObjectTree(Stats())
    tree.export(FakeBus(), ManagerInterface(None, {}), world.snapshot())  # type: ignore[arg-type]

    def events(n: int) -> None:
        for _ in range(n):
            world.step()
            tree.publish(world.snapshot())
            if world.rng.random() < 0.1:
                tree.managed_objects(ROOT)

    def settle() -> None:
        """The same state each time: every port plugged, decided the same, no choice."""
        for port in PORTS:
            device_id = f"usb:{port}"
            world.devices.setdefault(device_id, usb(port, devnum=PORTS.index(port) + 2))
        world.assignments = {i: Assignment(device_id=i, state=State.ATTACHED, guest="work")
                             for i in world.devices}
        world.guests = {g.name: g for g in map(guest, GUESTS)}
        world.overrides.clear()
        world.requests = {}
        tree.publish(world.snapshot())
        tree.managed_objects(ROOT)
        gc.collect()

    events(1000)
    settle()
    warm, objects_warm = _kept(tree), len(gc.get_objects())
    events(10_000)
    settle()
    after, objects_after = _kept(tree), len(gc.get_objects())
    assert after == warm
    assert warm["devices"] == len(PORTS) and warm["held"] == len(PORTS)
    # The interpreter's own caches may take a few objects; a leak of one per event,
    # or one per publish, would be 10,000.
    assert objects_after <= objects_warm + 200, (objects_warm, objects_after)
