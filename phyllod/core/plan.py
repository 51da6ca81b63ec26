"""What reconcile reads and what it returns: the World, and the Plan of steps.

A :class:`World` is one snapshot of everything reconcile weighs; a
:class:`Plan` is where each device should be (its :class:`Assignment`) and the
steps, the libvirt calls (:class:`Attach`, :class:`Detach`), that take it
there. "Action" is the policy's verb (attach, ignore, deny, ask); a step is
what the daemon carries out. The failures and the backoff between attempts
live here too: the daemon records them, reconcile reads them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from phyllod.core.guest_runs import HostBind, Run
from phyllod.core.model import Ask, Assignment, Device, Guest, Hostdev, HostFacts, Override

#: Seconds to wait before attempt n+1 after n failures; then phyllod gives up
#: until something about the device or guest changes.
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class OpKind(StrEnum):
    ATTACH = "attach"
    DETACH = "detach"


@dataclass(frozen=True, slots=True)
class Operation:
    """A libvirt call phyllod has issued and not yet seen the end of."""

    kind: OpKind
    guest: str
    alias: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """The last failed operation on a slot, and when to try again."""

    kind: OpKind
    guest: str
    error: str
    attempts: int
    retry_at: float | None  # None: gave up
    #: The guest run the call went to: once it ended, the failure is void.
    run: Run | None = None

    def describe(self) -> str:
        if self.retry_at is None:
            return f"{self.kind} failed {self.attempts} times, gave up: {self.error}"
        delay = BACKOFF[self.attempts - 1]
        return f"{self.kind} failed (attempt {self.attempts}, retry in {delay:g}s): {self.error}"


def record_failure(
    previous: Failure | None, kind: OpKind, guest: str, error: str, now: float,
    run: Run | None = None,
) -> Failure:
    """The failure record after one more failed attempt, with its backoff (counted
    afresh for another guest or another run of it)."""
    same = previous is not None and (previous.kind, previous.guest, previous.run) == (
        kind, guest, run)
    attempts = previous.attempts + 1 if same and previous else 1
    retry_at = now + BACKOFF[attempts - 1] if attempts <= len(BACKOFF) else None
    return Failure(kind=kind, guest=guest, error=error, attempts=attempts, retry_at=retry_at,
                   run=run)


@dataclass(frozen=True, slots=True)
class Sleep:
    """The host's sleep as devices see it: going to sleep, or just back.

    ``waking_until`` is None from PrepareForSleep(true) until resume; after
    resume it is the end of the settle window, in which devices come back
    (the kernel re-enumerates many of them) before any is attached again.
    """

    waking_until: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    """Everything reconcile looks at. ``guests`` is None while libvirt is unreachable.

    ``overrides`` is keyed by ``Device.identity``; ``host`` is what sysfs says
    about IOMMU groups, which every PCI attach is checked against. ``asks``
    (by ``Device.id``) is where the question about each plug stands,
    ``remembered`` (by identity) the answers kept for good (guest, or "" for
    the host), ``inserted`` the devices plugged in since phyllod started that
    have not been considered for a question yet.
    """

    devices: Mapping[str, Device]
    guests: Mapping[str, Guest] | None
    inflight: Mapping[str, Operation] = field(default_factory=dict)
    failures: Mapping[str, Failure] = field(default_factory=dict)
    now: float = 0.0
    overrides: Mapping[str, Override] = field(default_factory=dict)
    host: HostFacts = field(default_factory=HostFacts)
    asks: Mapping[str, Ask] = field(default_factory=dict)
    remembered: Mapping[str, str] = field(default_factory=dict)
    inserted: frozenset[str] = frozenset()
    sleep: Sleep | None = None
    #: Devices that vanished (by id), still in ``devices``: their debounce ends then.
    vanished: Mapping[str, float] = field(default_factory=dict)
    #: Host drivers' binds on devices in guests (by slot), judged each time.
    binds: Mapping[str, HostBind] = field(default_factory=dict)
    #: Runs libvirt's lifecycle events said stopped or are shutting down.
    ending: frozenset[Run] = frozenset()


@dataclass(frozen=True, slots=True)
class Question:
    """A device to ask about: the running guests it may go to (none: do not ask)."""

    device_id: str
    rule: str  # "" when asked because no rule matched
    candidates: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Attach:
    """A step: attach ``device`` to ``guest`` (for a PCI function, after its group mates
    in ``prepare`` left their host drivers)."""

    slot: str
    device: Device
    guest: str
    rule: str  # "" for a manual override
    #: PCI: group mates going to the same guest, to take from their host drivers first.
    prepare: tuple[str, ...] = ()
    #: Who decided, in words, when more than the rule's name is worth saying
    #: ("by your answer", "by rule 'desk' (behind port 1-2)").
    decided_by: str = ""
    #: USB: reset the device's port first (the rule's ``reset_before_attach``).
    reset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Detach:
    """A step: remove ``hostdev`` (by its alias) from ``guest``, ``why`` in words."""

    slot: str
    guest: str
    hostdev: Hostdev
    why: str
    device_id: str = ""  # "" when the device is gone


#: A planned libvirt call (the policy's verb is an ``Action``; this is what carries it out).
Step = Attach | Detach


def first_per_slot(steps: Iterable[Step], taken: Iterable[str] = ()) -> tuple[Step, ...]:
    """The first step of each slot, in order, leaving out the slots in ``taken``:
    a plan holds at most one step per slot (several stale enumerations of one
    slot are removed one at a time; a flapping device cannot race itself)."""
    slots = set(taken)
    out = []
    for step in steps:
        if step.slot not in slots:
            slots.add(step.slot)
            out.append(step)
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What reconcile returns: where each device should be, and the steps to get there.

    ``assignments`` (by ``Device.id``) is what the bus and explain show, each with
    its reason; ``steps`` are the libvirt calls to issue now, at most one per
    slot. ``wake_at`` is when to reconcile again even if nothing happens (a
    backoff or a debounce window ends), ``questions`` the plugs to ask about.
    """

    assignments: Mapping[str, Assignment]
    steps: tuple[Step, ...]
    wake_at: float | None = None
    questions: tuple[Question, ...] = ()
    #: Slots whose host driver bind was the guest letting go: marks to drop.
    let_go: tuple[str, ...] = ()

