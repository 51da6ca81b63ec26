"""Reconcile: from a snapshot of the world to the steps that bring it in line.

This is level-triggered, like a Kubernetes controller: whatever happened (a
plug, an unplug, a guest start or crash, a policy reload, a daemon restart, a
libvirt reconnect), the daemon takes a fresh snapshot (a :class:`World`) and
calls ``reconcile``, which returns a :class:`Plan`. It is pure: no clock, no
I/O, so every case can be tested as a table.

Who decides for a device is the ladder's to say (:mod:`phyllod.core.decide`:
deny, manual override, answer, remembered answer, rule); this module turns
its decision into a state, a reason and the steps. Ownership is read from the
snapshot (:mod:`phyllod.core.holdings`): a hostdev phyllod did not place is
left alone unless a ``deny`` rule says the device must not be in a guest at
all, or a person sends it to the host. When the policy would decide otherwise
than an override, the reason says so: a reload never undoes one silently.

An ``ask`` rule (or ``unmatched = "ask"``) leaves the choice to the person at
the machine, for devices plugged in while phyllod runs: reconcile names the
devices to ask about (``Plan.questions``), the daemon opens the requests and
feeds the answers back (``World.asks``; remembered ones in ``World.remembered``).

Real life (what users of today's tools suffer from most) is modelled too:
the host's sleep (``World.sleep``: devices whose rule says ``on_sleep =
"detach"`` leave their guests before it and come back after resume, each on
its own), a device that vanished and may return within its debounce window
(``World.vanished``: its plug waits until it returns or the window ends; only
the dead USB hostdev phyllod placed for it leaves its guest at once), a
device its guest lost to a reset on the host (``World.binds``, judged by
``guest_runs``: detached and attached again; a guest that let go of it as it
stopped is no reset), and what the host would lose (``safety``). What is
noted about a guest holds for one run of it: a failure against a run that
ended is void, and a run libvirt said is ending holds nothing and takes
nothing (``World.ending``).
"""

from __future__ import annotations

from collections.abc import Mapping

from phyllod.core.decide import Rung, decide
from phyllod.core.guest_runs import without_ending
from phyllod.core.holdings import Holdings
from phyllod.core.model import Assignment, Guest, OverrideKind, State
from phyllod.core.plan import Plan, World, first_per_slot
from phyllod.core.planner import Planner
from phyllod.core.policy import Policy


def _disconnected(policy: Policy, world: World) -> Plan:
    """libvirt is away: where the ladder sends each device, nothing moved."""
    reason = "libvirt is not connected"
    assignments = {}
    for d in world.devices.values():
        decision = decide(policy, d, override=world.overrides.get(d.identity),
                          ask=world.asks.get(d.id), remembered=world.remembered.get(d.identity))
        rule = decision.rule.name if decision.rule else ""
        override = decision.override
        if decision.rung is Rung.DENY:
            a = Assignment(device_id=d.id, state=State.DENIED, rule=rule,
                           reason=f"denied by rule '{rule}'")
        elif override is not None and override.kind is OverrideKind.ATTACH:
            a = Assignment(device_id=d.id, state=State.PENDING, guest=override.guest,
                           reason=reason)
        elif override is not None:
            a = Assignment(device_id=d.id, state=State.HOST, reason=reason)
        elif decision.guest:
            a = Assignment(device_id=d.id, state=State.PENDING, guest=decision.guest,
                           rule=rule, reason=reason)
        else:
            a = Assignment(device_id=d.id, state=State.HOST, rule=rule, reason=reason)
        assignments[d.id] = a
    return Plan(assignments=assignments, steps=())


def _frozen(world: World, guests: Mapping[str, Guest]) -> Plan:
    """No usable policy (broken at start-up): report, change nothing."""
    holders = Holdings(world.devices, guests).holders
    reason = "the policy has errors; nothing is changed until it is fixed and reloaded"
    assignments = {}
    for d in world.devices.values():
        held = holders.get(d.id)
        if held:
            assignments[d.id] = Assignment(device_id=d.id, state=State.ATTACHED,
                                           guest=held[0].guest.name, reason=reason)
        else:
            assignments[d.id] = Assignment(device_id=d.id, state=State.HOST, reason=reason)
    return Plan(assignments=assignments, steps=())


def reconcile(policy: Policy | None, world: World) -> Plan:
    """Where each present device should be, and the libvirt calls to get there.

    At most one step per slot, never one for a slot with work in flight:
    a flapping device cannot race itself, and nothing is attached twice.
    ``policy`` is None when none could be loaded: then nothing moves, so a
    typo at boot cannot pull devices out of running guests.
    """
    if world.guests is None:
        return _disconnected(policy or Policy(), world)
    if policy is None:
        return _frozen(world, world.guests)
    planner = Planner(policy, world, without_ending(world.guests, world.ending))
    assignments = {d.id: planner.device(d) for d in sorted(world.devices.values(),
                                                          key=lambda d: d.id)}
    planner.stale()
    return Plan(assignments=assignments, steps=first_per_slot(planner.steps),
                wake_at=min(planner.wakeups, default=None), questions=tuple(planner.questions),
                let_go=tuple(planner.let_go))
