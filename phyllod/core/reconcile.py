"""Reconcile: from a snapshot of the world to the actions that bring it in line.

This is level-triggered, like a Kubernetes controller: whatever happened (a
plug, an unplug, a guest start or crash, a policy reload, a daemon restart, a
libvirt reconnect), the daemon takes a fresh snapshot and calls ``reconcile``.
It is pure: no clock, no I/O, so every case can be tested as a table.

Ownership is read from the snapshot, not remembered: a hostdev carrying
phyllod's alias was placed by phyllod and may be removed by it; any other
hostdev was placed by a person and is left alone unless a ``deny`` rule says
the device must not be in a guest at all, or a person sends it to the host.

A manual override (``phyllodctl attach``/``detach``) is a person's explicit
choice: it wins over attach and ignore rules, and a ``deny`` rule wins over it.
When the policy would decide otherwise, the reason says so: a reload never
undoes an override silently.

An ``ask`` rule (or ``unmatched = "ask"``) leaves the choice to the person at
the machine, for devices plugged in while phyllod runs: reconcile names the
devices to ask about (``Plan.questions``), the daemon opens the requests and
feeds the answers back (``World.asks``; remembered ones in ``World.remembered``).
The order of precedence is: deny, manual override, answer, remembered answer.

Real life (what users of today's tools suffer from most) is modelled too:
the host's sleep (``World.sleep``: devices whose rule says ``on_sleep =
"detach"`` leave their guests before it and come back after resume, each on
its own), a device that vanished and may return within its debounce window
(``World.vanished``: nothing moves until it returns or the window ends), a
device its guest lost to a reset on the host (``World.binds``, judged by
``guest_runs``: detached and attached again; a guest that let go of it as it
stopped is no reset), and what the host would lose (``usb_safety``,
``pci_safety``). What is noted about a guest holds for one run of it: a
failure against a run that ended is void, and a run libvirt said is ending
holds nothing and takes nothing (``World.ending``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from phyllod.core.guest_runs import BindVerdict, HostBind, Run, judge_bind, run_of, without_ending
from phyllod.core.model import (
    Ask,
    AskOutcome,
    Assignment,
    Device,
    Guest,
    GuestState,
    Hostdev,
    HostFacts,
    Override,
    OverrideKind,
    State,
    Subsystem,
)
from phyllod.core.policy import Action, OnSleep, Policy, Rule, Unmatched, default_sleep_action
from phyllod.core.safety.pci import Verdict, group_members, pci_verdict
from phyllod.core.safety.usb import usb_verdict

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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Sleep:
    """The host's sleep as devices see it: going to sleep, or just back.

    ``waking_until`` is None from PrepareForSleep(true) until resume; after
    resume it is the end of the settle window, in which devices come back
    (the kernel re-enumerates many of them) before any is attached again.
    """

    waking_until: float | None = None


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
    return Failure(kind, guest, error, attempts, retry_at, run)


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Attach:
    slot: str
    device: Device
    guest: str
    rule: str  # "" for a manual override
    #: PCI: group mates going to the same guest, to take from their host drivers first.
    prepare: tuple[str, ...] = ()
    #: Who decided, in words, when more than the rule's name is worth saying
    #: ("by your answer", "by rule 'desk' (behind port 1-2)").
    source: str = ""
    #: USB: reset the device's port first (the rule's ``reset_before_attach``).
    reset: bool = False


@dataclass(frozen=True, slots=True)
class Detach:
    slot: str
    guest: str
    hostdev: Hostdev
    why: str
    device_id: str = ""  # "" when the device is gone


@dataclass(frozen=True, slots=True)
class Plan:
    assignments: Mapping[str, Assignment]
    steps: tuple[Attach | Detach, ...]
    wake_at: float | None = None
    questions: tuple[Question, ...] = ()
    #: Slots whose host driver bind was the guest letting go: marks to drop.
    let_go: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Holding:
    guest: Guest
    hostdev: Hostdev


class _Index:
    """Which present device each hostdev in a running guest refers to."""

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
        self.holders: dict[str, list[_Holding]] = defaultdict(list)
        self.stale: list[_Holding] = []
        for g in guests.values():
            if not g.state.active:
                continue
            for h in g.hostdevs:
                d = self._resolve(h)
                if d is not None:
                    self.holders[d.id].append(_Holding(g, h))
                elif h.owned:
                    self.stale.append(_Holding(g, h))

    def _resolve(self, h: Hostdev) -> Device | None:
        if h.subsystem is Subsystem.PCI:
            return self.by_pci_address.get(h.address)
        if h.bus is not None and h.device is not None:
            d = self.by_address.get((h.bus, h.device))
            if d is None:
                return None
            if (h.vendor and h.vendor != d.vendor) or (h.product and h.product != d.product):
                return None
            # An owned hostdev names the slot it was made for: a device that
            # re-enumerated elsewhere with a recycled number is not it.
            return d if not h.owned or h.slot == d.slot else None
        candidates = self.by_ids.get((h.vendor, h.product), [])
        return candidates[0] if len(candidates) == 1 else None


def find_guest(ref: str, guests: Mapping[str, Guest]) -> Guest | None:
    """The guest ``ref`` designates, by name first, then by UUID."""
    if ref in guests:
        return guests[ref]
    for g in guests.values():
        if g.uuid.lower() == ref.lower():
            return g
    return None


@dataclass(frozen=True, slots=True)
class _Why:
    """Who sends a device to a guest: a rule or a person, in words for the reason."""

    rule: str  # "" for a manual override
    note: str = ""  # what the policy would do instead, when it disagrees
    allowed: frozenset[str] = frozenset()  # PCI risks the rule accepts
    source: str = ""  # who decided, when not the rule or an override ("by your answer")
    reset: bool = False  # the rule's reset_before_attach
    place: str = ""  # how the rule found it, when that is worth saying ("behind port 1-2")

    @property
    def by(self) -> str:
        if self.source:
            return self.source
        if not self.rule:
            return "by a manual override"
        return f"by rule '{self.rule}'" + (f" ({self.place})" if self.place else "")

    def say(self, text: str) -> str:
        return f"{text}; {self.note}" if self.note else text


def _policy_note(rule: Rule | None, override: Override) -> str:
    """How the policy disagrees with an override, so a reload never hides it."""
    if rule is None:
        return "" if override.kind is OverrideKind.HOST else "no rule matches it"
    if rule.action is Action.ATTACH:
        if override.kind is OverrideKind.ATTACH and rule.targets(override.guest, override.guest):
            return ""
        return f"rule '{rule.name}' would send it to '{rule.guest}'"
    if rule.action is Action.IGNORE:
        return f"rule '{rule.name}' would ignore it"
    return ""


class _Planner:
    def __init__(self, policy: Policy, world: World, guests: Mapping[str, Guest]) -> None:
        self.policy = policy
        self.world = world
        self.guests = guests
        self.index = _Index(world.devices, guests)
        self.stale_slots = {h.hostdev.slot for h in self.index.stale}
        self.actions: list[Attach | Detach] = []
        self.wakeups: list[float] = []
        self.questions: list[Question] = []
        self.let_go: list[str] = []
        self.by_uuid = {g.uuid: g for g in guests.values()}
        pci = [d for d in world.devices.values() if d.subsystem is Subsystem.PCI]
        #: Where each PCI device is sent (guest UUID), to see which group mates go together.
        self.pci_targets = {d.address: t.uuid for d in pci
                            if (t := self._target_guest(d)) is not None}
        #: IOMMU groups with a move under way: one attach per group at a time.
        self.groups_busy = {d.iommu_group for d in pci
                            if d.slot in world.inflight and d.iommu_group is not None}

    def _target_guest(self, d: Device) -> Guest | None:
        """The guest policy and overrides send ``d`` to, if any (deny wins)."""
        rule = self.policy.match(d)
        if rule is not None and rule.action is Action.DENY:
            return None
        override = self.world.overrides.get(d.identity)
        if override is not None:
            ref = override.guest if override.kind is OverrideKind.ATTACH else ""
        elif self._asks(d, rule):
            ref = self._answer(d)[0] or ""
        else:
            ref = rule.guest if rule is not None and rule.action is Action.ATTACH else ""
        return find_guest(ref, self.guests) if ref else None

    def _asks(self, d: Device, rule: Rule | None) -> bool:
        """Whether the person at the machine decides for ``d`` (an ask rule, or unmatched)."""
        if rule is not None:
            return rule.action is Action.ASK
        return self.policy.settings.unmatched is Unmatched.ASK

    def _answer(self, d: Device) -> tuple[str | None, str]:
        """The answer in force for ``d`` (guest, "" for the host, None) and whose it is."""
        ask = self.world.asks.get(d.id)
        if ask is not None and ask.outcome is AskOutcome.ANSWERED:
            return ask.guest, "your answer"
        remembered = self.world.remembered.get(d.identity)
        if remembered is not None:
            return remembered, "a remembered answer"
        return None, ""

    def _due(self, slot: str, kind: OpKind, guest: str) -> tuple[bool, str]:
        """Whether an operation may be issued now, else the failure to show."""
        f = self.world.failures.get(slot)
        if f is None or f.kind != kind or f.guest != guest:
            return True, ""
        if f.run is not None and f.run != run_of(self.guests.get(guest)):
            return True, ""  # it concerned a run that ended
        if f.retry_at is not None and f.retry_at <= self.world.now:
            return True, ""
        if f.retry_at is not None:
            self.wakeups.append(f.retry_at)
        return False, f.describe()

    def _detach(self, slot: str, holding: _Holding, why: str, device_id: str = "") -> str:
        """Queue a detach unless backing off; returns the failure text if any."""
        ok, failure = self._due(slot, OpKind.DETACH, holding.guest.name)
        if ok:
            self.actions.append(Detach(slot, holding.guest.name, holding.hostdev, why, device_id))
        return failure

    def device(self, d: Device) -> Assignment:
        rule = self.policy.match(d)
        rule_name = rule.name if rule else ""
        op = self.world.inflight.get(d.slot)
        if op is not None:
            state = State.ATTACHING if op.kind is OpKind.ATTACH else State.DETACHING
            return Assignment(d.id, state, op.guest, rule_name, f"{op.kind} in progress")
        held = self.index.holders.get(d.id, [])
        if d.id in self.world.vanished:
            return self._vanished(d, rule_name, held)
        if self.world.sleep is not None and self._sleeps(d, rule, held):
            return self._sleeping(d, rule_name, held, self.world.sleep)
        if self._taken_back(d.slot):
            for h in held:
                if h.hostdev.owned:
                    why = "its guest lost it to a reset on the host; attaching it again"
                    failure = self._detach(d.slot, h, why, d.id)
                    if failure:
                        return Assignment(d.id, State.FAILED, h.guest.name, rule_name, failure)
                    return Assignment(d.id, State.DETACHING, h.guest.name, rule_name, why)
        override = self.world.overrides.get(d.identity)
        if rule is not None and rule.action is Action.DENY:
            return self._deny(d, rule, held, override)
        if override is not None:
            note = _policy_note(rule, override)
            if override.kind is OverrideKind.ATTACH:
                return self._attach(d, override.guest, _Why("", note), held)
            return self._host(d, held, note)
        if self._asks(d, rule):
            return self._ask(d, rule, held)
        if rule is None:
            return self._unmanaged(d, held)
        if rule.action is Action.IGNORE:
            where = held[0].guest.name if held else ""
            state = State.ATTACHED if held else State.HOST
            return Assignment(d.id, state, where, rule.name, f"ignored by rule '{rule.name}'")
        place = f"behind port {rule.match.port_below}" if rule.match.port_below else ""
        return self._attach(d, rule.guest, _Why(rule.name, allowed=rule.allow_risks,
                                                reset=rule.reset_before_attach, place=place),
                            held)

    def _taken_back(self, slot: str) -> bool:
        """Whether a host driver's bind took the device from a guest that runs on;
        a bind that was the guest letting go is noted for the daemon to drop."""
        bind = self.world.binds.get(slot)
        if bind is None:
            return False
        verdict = judge_bind(bind, self.by_uuid.get(bind.run.uuid), self.world.ending)
        if verdict is BindVerdict.LET_GO:
            self.let_go.append(slot)
        return verdict is BindVerdict.TAKEN_BACK

    def _vanished(self, d: Device, rule: str, held: list[_Holding]) -> Assignment:
        """Gone from the host, maybe for a moment: wait for it before touching any guest."""
        until = self.world.vanished[d.id]
        self.wakeups.append(until)
        left = max(0.0, until - self.world.now)
        reason = f"vanished from the host; waiting {left:.1f}s for it to return (debounce)"
        if held:
            return Assignment(d.id, State.ATTACHED, held[0].guest.name, rule, reason)
        return Assignment(d.id, State.HOST, "", rule, reason)

    def _sleeps(self, d: Device, rule: Rule | None, held: list[_Holding]) -> bool:
        """Whether ``d`` leaves its guest for the host's sleep: it is (or would be) in
        a guest by phyllod's doing, and its rule (or the default) says detach."""
        action = rule.sleep_action(d) if rule is not None else default_sleep_action(d)
        if action is not OnSleep.DETACH:
            return False
        return any(h.hostdev.owned for h in held) or (
            not held and self._target_guest(d) is not None)

    def _sleeping(self, d: Device, rule: str, held: list[_Holding], sleep: Sleep) -> Assignment:
        target = self._target_guest(d)
        name = target.name if target is not None else ""
        for h in held:
            if not h.hostdev.owned:
                continue
            why = "the host is going to sleep"
            failure = self._detach(d.slot, h, why, d.id)
            if failure:
                return Assignment(d.id, State.FAILED, h.guest.name, rule, f"{why}; {failure}")
            return Assignment(d.id, State.DETACHING, h.guest.name, rule,
                              f"{why}; removing it from '{h.guest.name}'")
        if sleep.waking_until is None:
            return Assignment(d.id, State.SLEEPING, name, rule, "detached for sleep, waiting "
                              "for the host to resume")
        self.wakeups.append(sleep.waking_until)
        left = max(0.0, sleep.waking_until - self.world.now)
        return Assignment(d.id, State.SLEEPING, name, rule, "back from sleep; attaching it "
                          f"again once devices have settled ({left:.1f}s)")

    def _host(self, d: Device, held: list[_Holding], note: str) -> Assignment:
        """A person sent the device to the host: remove it from any guest, ours or not."""
        why = _Why("", note)
        reason = "kept on the host by a manual override"
        for h in held:
            failure = self._detach(d.slot, h, reason, d.id)
            if failure:
                return Assignment(d.id, State.FAILED, h.guest.name, "", why.say(failure))
            return Assignment(d.id, State.DETACHING, h.guest.name, "",
                              why.say(f"{reason}; removing it from '{h.guest.name}'"))
        return Assignment(d.id, State.HOST, "", "", why.say(reason))

    def _ask(self, d: Device, rule: Rule | None, held: list[_Holding]) -> Assignment:
        """A device the person at the machine decides for; never moved without an answer."""
        name = rule.name if rule else ""
        label = f"rule '{name}' asks" if rule else "no rule matches and unmatched devices are asked"
        guest, whose = self._answer(d)
        if guest == "":
            reason = f"kept on the host by {whose}"
            for h in held:
                if not h.hostdev.owned:
                    continue
                failure = self._detach(d.slot, h, reason, d.id)
                if failure:
                    return Assignment(d.id, State.FAILED, h.guest.name, name, failure)
                return Assignment(d.id, State.DETACHING, h.guest.name, name,
                                  f"{reason}; removing it from '{h.guest.name}'")
            if held:
                return Assignment(d.id, State.ATTACHED, held[0].guest.name, name,
                                  f"{reason}, but attached outside phyllod")
            return Assignment(d.id, State.HOST, "", name, reason)
        if guest is not None:
            return self._attach(d, guest, _Why(name, source=f"by {whose}"), held)
        ask = self.world.asks.get(d.id)
        if ask is not None and ask.outcome is AskOutcome.PENDING:
            return Assignment(d.id, State.ASKING, "", name, _asking(label, ask.candidates))
        if held:
            where = held[0].guest.name
            return Assignment(d.id, State.ATTACHED, held[0].guest.name, name,
                              f"{label}; left in '{where}' until someone answers")
        if ask is not None and ask.outcome is AskOutcome.EXPIRED:
            return Assignment(d.id, State.HOST, "", name,
                              f"{label}; no answer before the deadline, stays on the host")
        if ask is not None and ask.outcome is AskOutcome.UNASKED:
            return Assignment(d.id, State.HOST, "", name, f"{label}, but none of its guests "
                              "was running when it was plugged in; stays on the host")
        if d.id not in self.world.inserted:
            return Assignment(d.id, State.HOST, "", name, f"{label} only about devices plugged "
                              "in while phyllod runs; this one was present at start, "
                              "stays on the host")
        candidates = self._candidates(rule)
        self.questions.append(Question(d.id, name, candidates))
        if not candidates:
            return Assignment(d.id, State.HOST, "", name, f"{label}, but none of its guests "
                              "is running; stays on the host")
        return Assignment(d.id, State.ASKING, "", name, _asking(label, candidates))

    def _candidates(self, rule: Rule | None) -> tuple[str, ...]:
        """The running guests an ask rule offers (all running guests when it names none)."""
        running = [g for g in self.guests.values() if g.state is GuestState.RUNNING]
        if rule is None or not rule.candidates:
            return tuple(sorted(g.name for g in running))
        named = []
        for ref in rule.candidates:
            g = find_guest(ref, self.guests)
            if g is not None and g.state is GuestState.RUNNING and g.name not in named:
                named.append(g.name)
        return tuple(named)

    def _unmanaged(self, d: Device, held: list[_Holding]) -> Assignment:
        for h in held:
            if h.hostdev.owned:
                failure = self._detach(d.slot, h, "no rule matches it any more", d.id)
                if failure:
                    return Assignment(d.id, State.FAILED, h.guest.name, "", failure)
                return Assignment(d.id, State.DETACHING, h.guest.name, "",
                                  "no rule matches it any more")
        if held:
            return Assignment(d.id, State.ATTACHED, held[0].guest.name, "",
                              "attached outside phyllod; no rule matches it")
        return Assignment(d.id, State.HOST, "", "", "no rule matches; stays on the host")

    def _deny(self, d: Device, rule: Rule, held: list[_Holding],
              override: Override | None) -> Assignment:
        reason = f"denied by rule '{rule.name}'"
        if override is not None and override.kind is OverrideKind.ATTACH:
            reason += f" (deny wins over the manual attach to '{override.guest}')"
        for h in held:
            failure = self._detach(d.slot, h, reason, d.id)
            if failure:
                return Assignment(d.id, State.FAILED, h.guest.name, rule.name,
                                  f"{reason}; {failure}")
            return Assignment(d.id, State.DETACHING, h.guest.name, rule.name,
                              f"{reason}; removing it from '{h.guest.name}'")
        return Assignment(d.id, State.DENIED, "", rule.name, reason)

    def _attach(self, d: Device, ref: str, why: _Why, held: list[_Holding]) -> Assignment:
        target = find_guest(ref, self.guests)
        name = target.name if target else ref
        rule = why.rule

        def assignment(state: State, guest: str, reason: str) -> Assignment:
            return Assignment(d.id, state, guest, rule, why.say(reason))

        here = [h for h in held if target is not None and h.guest.uuid == target.uuid]
        elsewhere = [h for h in held if h not in here]
        if here:
            warning = self._warning(d, why)
            return assignment(State.ATTACHED, name, f"attached to '{name}' {why.by}{warning}")
        foreign = [h for h in elsewhere if not h.hostdev.owned]
        if foreign:
            other = foreign[0].guest.name
            return assignment(State.FAILED, name,
                              f"held by guest '{other}' outside phyllod; detach it there first")
        if elsewhere:
            h = elsewhere[0]
            failure = self._detach(d.slot, h, f"{why.by} it goes to '{name}'", d.id)
            if failure:
                return assignment(State.FAILED, h.guest.name, failure)
            return assignment(State.DETACHING, h.guest.name,
                              f"moving from '{h.guest.name}' to '{name}'")
        verdict, together = (self._pci_verdict(d, target, why) if d.subsystem is Subsystem.PCI
                             else (usb_verdict(d, self.world.host, why.allowed), frozenset[str]()))
        if not verdict.ok:
            # Said before anything else: a person learns it before the guest even starts.
            return assignment(State.DENIED, name, f"not safe to pass: {verdict.reason()}")
        if target is None:
            return assignment(State.PENDING, name, f"no guest '{name}' is defined")
        if not target.state.active:
            now = "stopping" if target.state is GuestState.STOPPING else "not running"
            return assignment(State.PENDING, name, f"guest '{name}' is {now}")
        if d.slot in self.stale_slots:
            # Its previous enumeration still holds a port in some guest:
            # free that first (stale() queues it) so ports never run out.
            return assignment(State.PENDING, name,
                              "waiting for its previous plug to be removed from the guest")
        prepare: tuple[str, ...] = ()
        warning = f"; {verdict.reason()}" if verdict.warnings else ""
        if d.subsystem is Subsystem.PCI:
            if d.iommu_group in self.groups_busy:
                return assignment(State.PENDING, name,
                                  f"waiting for the rest of IOMMU group {d.iommu_group}")
            functions = self.world.host.functions
            prepare = tuple(sorted(m for m in together if m in functions
                                   and functions[m].driver != "vfio-pci"))
        ok, failure = self._due(d.slot, OpKind.ATTACH, name)
        if not ok:
            return assignment(State.FAILED, name, failure)
        if d.iommu_group is not None:
            self.groups_busy.add(d.iommu_group)
        reset = why.reset and d.subsystem is Subsystem.USB
        source = why.by if why.source or why.place else ""
        self.actions.append(Attach(d.slot, d, name, rule, prepare, source, reset))
        return assignment(State.ATTACHING, name, f"attaching to '{name}' {why.by}{warning}")

    def _pci_verdict(self, d: Device, target: Guest | None,
                     why: _Why) -> tuple[Verdict, frozenset[str]]:
        """The safety verdict, counting group mates that go to the same guest as safe
        (and bus mates that go there as reset along with it)."""
        along = frozenset(a for a, uuid in self.pci_targets.items()
                          if target is not None and uuid == target.uuid and a != d.address)
        together = along & frozenset(group_members(d.address, self.world.host))
        return pci_verdict(d.address, self.world.host, why.allowed, together, along), together

    def _warning(self, d: Device, why: _Why) -> str:
        """For a device already in a guest: the risks accepted that still apply."""
        verdict = (pci_verdict(d.address, self.world.host, why.allowed)
                   if d.subsystem is Subsystem.PCI
                   else usb_verdict(d, self.world.host, why.allowed))
        return f"; {verdict.reason()}" if verdict.ok and verdict.warnings else ""

    def stale(self) -> None:
        """Remove hostdevs phyllod placed for devices that are gone."""
        present = {d.slot for d in self.world.devices.values()}
        for h in self.index.stale:
            slot = h.hostdev.slot
            if slot in self.world.inflight:
                continue
            why = ("it came back with a new device number; removing the old one"
                   if slot in present else "the device is gone")
            self._detach(slot, h, why)


def _asking(label: str, candidates: tuple[str, ...]) -> str:
    offers = ", ".join(f"'{c}'" for c in candidates)
    return f"{label}: waiting for an answer ({offers} or the host)"


def _disconnected(policy: Policy, world: World) -> Plan:
    assignments = {}
    for d in world.devices.values():
        rule = policy.match(d)
        override = world.overrides.get(d.identity)
        if rule is not None and rule.action is Action.DENY:
            a = Assignment(d.id, State.DENIED, "", rule.name, f"denied by rule '{rule.name}'")
        elif override is not None and override.kind is OverrideKind.ATTACH:
            a = Assignment(d.id, State.PENDING, override.guest, "", "libvirt is not connected")
        elif override is not None:
            a = Assignment(d.id, State.HOST, "", "", "libvirt is not connected")
        elif rule is not None and rule.action is Action.ATTACH:
            a = Assignment(d.id, State.PENDING, rule.guest, rule.name, "libvirt is not connected")
        elif (answer := _kept_answer(policy, rule, d, world)):
            a = Assignment(d.id, State.PENDING, answer, rule.name if rule else "",
                           "libvirt is not connected")
        else:
            a = Assignment(d.id, State.HOST, "", rule.name if rule else "",
                           "libvirt is not connected")
        assignments[d.id] = a
    return Plan(assignments, ())


def _kept_answer(policy: Policy, rule: Rule | None, d: Device, world: World) -> str:
    """The guest an answer or a remembered answer sends ``d`` to, "" if none."""
    asks = rule.action is Action.ASK if rule else policy.settings.unmatched is Unmatched.ASK
    if not asks:
        return ""
    ask = world.asks.get(d.id)
    if ask is not None and ask.outcome is AskOutcome.ANSWERED:
        return ask.guest
    return world.remembered.get(d.identity, "")


def _frozen(world: World, guests: Mapping[str, Guest]) -> Plan:
    """No usable policy (broken at start-up): report, change nothing."""
    index = _Index(world.devices, guests)
    reason = "the policy has errors; nothing is changed until it is fixed and reloaded"
    assignments = {}
    for d in world.devices.values():
        held = index.holders.get(d.id)
        if held:
            assignments[d.id] = Assignment(d.id, State.ATTACHED, held[0].guest.name, "", reason)
        else:
            assignments[d.id] = Assignment(d.id, State.HOST, "", "", reason)
    return Plan(assignments, ())


def reconcile(policy: Policy | None, world: World) -> Plan:
    """Where each present device should be, and the libvirt calls to get there.

    At most one action per slot, never one for a slot with work in flight:
    a flapping device cannot race itself, and nothing is attached twice.
    ``policy`` is None when none could be loaded: then nothing moves, so a
    typo at boot cannot pull devices out of running guests.
    """
    if world.guests is None:
        return _disconnected(policy or Policy(), world)
    if policy is None:
        return _frozen(world, world.guests)
    planner = _Planner(policy, world, without_ending(world.guests, world.ending))
    assignments = {d.id: planner.device(d) for d in sorted(world.devices.values(),
                                                          key=lambda d: d.id)}
    planner.stale()
    # Several stale enumerations of one slot are removed one at a time.
    seen: set[str] = set()
    steps = []
    for a in planner.actions:
        if a.slot not in seen:
            seen.add(a.slot)
            steps.append(a)
    return Plan(assignments, tuple(steps), min(planner.wakeups, default=None),
                tuple(planner.questions), tuple(planner.let_go))
