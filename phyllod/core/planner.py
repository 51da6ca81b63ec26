"""The planner: one device at a time, from the ladder's decision to a state and steps.

:func:`~phyllod.core.reconcile.reconcile` makes one :class:`Planner` per
snapshot and asks it about each present device, then about stale hostdevs.
The ladder (:mod:`phyllod.core.decide`) says who decides; the planner adds
what the snapshot says (work in flight, a device that vanished, the host's
sleep, a reset on the host, who holds the device, what passing it would
cost the host) and words the reason a person reads.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from phyllod.core.decide import Decision, Rung, ladder, policy_note
from phyllod.core.guest_runs import BindVerdict, judge_bind, run_of
from phyllod.core.holdings import Held, Holding, Holdings
from phyllod.core.model import (
    AskOutcome,
    Assignment,
    Device,
    Guest,
    GuestState,
    Override,
    OverrideKind,
    State,
    Subsystem,
    find_guest,
)
from phyllod.core.plan import Attach, Detach, OpKind, Question, Sleep, Step, World
from phyllod.core.policy import Action, OnSleep, Policy, Rule, default_on_sleep
from phyllod.core.safety.pci import group_members, pci_verdict
from phyllod.core.safety.usb import usb_verdict
from phyllod.core.safety.verdict import Verdict

#: Whose answer decided, in words, by the rung that holds it.
_WHOSE = {Rung.ANSWER: "your answer", Rung.REMEMBERED: "a remembered answer"}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Grounds:
    """On what grounds a device goes to a guest: a rule or a person, in words for the reason."""

    rule: str  # "" for a manual override
    policy_disagrees: str = ""  # what the policy would do instead of an override
    allowed_risks: frozenset[str] = frozenset()  # PCI risks the rule accepts
    decided_by: str = ""  # who decided, when not the rule or an override ("by your answer")
    reset_first: bool = False  # the rule's reset_before_attach
    where_matched: str = ""  # how the rule found it, when worth saying ("behind port 1-2")

    @property
    def by_whom(self) -> str:
        if self.decided_by:
            return self.decided_by
        if not self.rule:
            return "by a manual override"
        return f"by rule '{self.rule}'" + (f" ({self.where_matched})" if self.where_matched
                                           else "")

    def noted(self, text: str) -> str:
        """``text`` with what the policy would do instead, if it disagrees."""
        return f"{text}; {self.policy_disagrees}" if self.policy_disagrees else text


def _owned(held: Sequence[Holding]) -> Holding | None:
    """The first holding phyllod placed."""
    for h in held:
        if h.hostdev.owned:
            return h
    return None


class Planner:
    """One reconcile: the decision, state and steps of each device, in turn.

    It collects the steps (at most one per slot is kept), the times to look
    again (``wakeups``), the questions to open and the binds that were a guest
    letting go; each device's ``device`` call says where it stands.

    :mod:`phyllod.core.replan` plans only some devices and hands in what it
    keeps from turn to turn: the ``holdings``, each device's first matching
    ``rules`` (by id), and the ``pci`` devices (all of them, or none when no
    PCI device is planned: they only weigh each other).
    """

    def __init__(self, policy: Policy, world: World, guests: Mapping[str, Guest], *,
                 holdings: Held | None = None, rules: Mapping[str, Rule | None] | None = None,
                 pci: Iterable[Device] | None = None) -> None:
        self.policy = policy
        self.world = world
        self.guests = guests
        self.holdings = holdings if holdings is not None else Holdings(world.devices, guests)
        self.stale_slots = {h.hostdev.slot for h in self.holdings.stale}
        self.rules = rules or {}
        #: Each device's decision (by id), asked once per planner.
        self.decisions: dict[str, Decision] = {}
        self.steps: list[Step] = []
        self.wakeups: list[float] = []
        self.questions: list[Question] = []
        self.let_go: list[str] = []
        self.by_uuid = {g.uuid: g for g in guests.values()}
        if pci is None:
            pci = [d for d in world.devices.values() if d.subsystem is Subsystem.PCI]
        #: Where each PCI device is sent (guest UUID), to see which group mates go together.
        self.pci_targets = {d.address: t.uuid for d in pci
                            if (t := self._target_guest(d)) is not None}
        #: IOMMU groups with a move under way: one attach per group at a time.
        self.groups_busy = {d.iommu_group for d in pci
                            if d.slot in world.inflight and d.iommu_group is not None}

    def decision(self, d: Device, device_id: str) -> Decision:
        """The ladder's decision for ``d`` (whose id is ``device_id``)."""
        made = self.decisions.get(device_id)
        if made is None:
            world, identity = self.world, d.identity
            rules = self.rules
            rule = rules[device_id] if device_id in rules else self.policy.match(d)
            made = ladder(self.policy, rule, override=world.overrides.get(identity),
                          ask=world.asks.get(device_id),
                          remembered=world.remembered.get(identity))
            self.decisions[device_id] = made
        return made

    def _target_guest(self, d: Device) -> Guest | None:
        """The guest the ladder sends ``d`` to, if any."""
        ref = self.decision(d, d.id).guest
        return find_guest(ref, self.guests) if ref else None

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

    def _detach(self, slot: str, holding: Holding, why: str, device_id: str = "") -> str:
        """Queue a detach unless backing off; returns the failure text if any."""
        ok, failure = self._due(slot, OpKind.DETACH, holding.guest.name)
        if ok:
            self.steps.append(Detach(slot=slot, guest=holding.guest.name,
                                     hostdev=holding.hostdev, why=why, device_id=device_id))
        return failure

    def _take_out(self, d: Device, holding: Holding, rule: str, why: str, *,
                  leaving: str = "", failure_with_why: bool = False,
                  noted: _Grounds | None = None) -> Assignment:
        """Take ``d`` out of the guest ``holding`` it (unless backing off), and say so.

        ``why`` goes with the detach step; the reason is ``leaving`` while it
        leaves ("WHY; removing it from 'GUEST'" unless given), or the failure
        that keeps it (after ``why`` if ``failure_with_why``); ``noted`` adds
        what the policy would do instead of an override.
        """
        guest = holding.guest.name
        failure = self._detach(d.slot, holding, why, d.id)
        if failure:
            state, reason = State.FAILED, f"{why}; {failure}" if failure_with_why else failure
        else:
            state, reason = State.DETACHING, leaving or f"{why}; removing it from '{guest}'"
        if noted is not None:
            reason = noted.noted(reason)
        return Assignment(device_id=d.id, state=state, guest=guest, rule=rule, reason=reason)

    def device(self, d: Device) -> Assignment:
        device_id, slot = d.id, d.slot
        decision = self.decision(d, device_id)
        rule = decision.rule
        rule_name = rule.name if rule else ""

        def stays(state: State, guest: str, reason: str) -> Assignment:
            return Assignment(device_id=device_id, state=state, guest=guest, rule=rule_name,
                              reason=reason)

        op = self.world.inflight.get(slot)
        if op is not None:
            state = State.ATTACHING if op.kind is OpKind.ATTACH else State.DETACHING
            return stays(state, op.guest, f"{op.kind} in progress")
        held = self.holdings.holders.get(device_id, ())
        if device_id in self.world.vanished:
            return self._vanished(d, rule_name, held)
        if self.world.sleep is not None and self._sleeps(d, rule, held):
            return self._sleeping(d, rule_name, held, self.world.sleep)
        if self._taken_back(slot) and (owned := _owned(held)) is not None:
            why = "its guest lost it to a reset on the host; attaching it again"
            return self._take_out(d, owned, rule_name, why, leaving=why)
        override = decision.override
        if decision.rung is Rung.DENY:
            assert rule is not None
            return self._deny(d, rule, held, override)
        if decision.rung is Rung.OVERRIDE:
            assert override is not None
            grounds = _Grounds(rule="", policy_disagrees=policy_note(rule, override))
            if override.kind is OverrideKind.ATTACH:
                return self._attach(d, override.guest, grounds, held)
            return self._host(d, held, grounds)
        if decision.rung in (Rung.ANSWER, Rung.REMEMBERED, Rung.ASK):
            return self._ask(d, decision, held)
        if rule is None:
            owned = _owned(held)
            if owned is not None:
                why = "no rule matches it any more"
                return self._take_out(d, owned, "", why, leaving=why)
            if held:
                return stays(State.ATTACHED, held[0].guest.name,
                             "attached outside phyllod; no rule matches it")
            return stays(State.HOST, "", "no rule matches; stays on the host")
        if rule.action is Action.IGNORE:
            return stays(State.ATTACHED if held else State.HOST,
                         held[0].guest.name if held else "", f"ignored by rule '{rule.name}'")
        place = f"behind port {rule.match.port_below}" if rule.match.port_below else ""
        return self._attach(d, rule.guest, _Grounds(
            rule=rule.name, allowed_risks=rule.allow_risks, reset_first=rule.reset_before_attach,
            where_matched=place), held)

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

    def _vanished(self, d: Device, rule: str, held: Sequence[Holding]) -> Assignment:
        """Gone from the host, maybe for a moment: its plug (guest, answer, question)
        waits out the window for it to return, and is then attached again.

        A USB hostdev phyllod placed for it is taken out at once: it names the
        device by bus and device number, which a device that returns never
        has again (re-enumerated, it gets a new number), so it points at
        nothing now and ever after, and only holds the guest's port.
        """
        until = self.world.vanished[d.id]
        self.wakeups.append(until)
        left = max(0.0, until - self.world.now)
        reason = f"vanished from the host; waiting {left:.1f}s for it to return (debounce)"
        owned = _owned(held)
        if owned is not None and d.subsystem is Subsystem.USB:
            return self._take_out(d, owned, rule, "it vanished from the host",
                                  leaving=f"{reason}; removing its dead hostdev from "
                                          f"'{owned.guest.name}'", failure_with_why=True)
        guest = held[0].guest.name if held else ""
        return Assignment(device_id=d.id, state=State.ATTACHED if held else State.HOST,
                          guest=guest, rule=rule, reason=reason)

    def _sleeps(self, d: Device, rule: Rule | None, held: Sequence[Holding]) -> bool:
        """Whether ``d`` leaves its guest for the host's sleep: it is (or would be) in
        a guest by phyllod's doing, and its rule (or the default) says detach."""
        on_sleep = rule.on_sleep_for(d) if rule is not None else default_on_sleep(d)
        if on_sleep is not OnSleep.DETACH:
            return False
        return _owned(held) is not None or (not held and self._target_guest(d) is not None)

    def _sleeping(self, d: Device, rule: str, held: Sequence[Holding],
                  sleep: Sleep) -> Assignment:
        target = self._target_guest(d)
        owned = _owned(held)
        if owned is not None:
            return self._take_out(d, owned, rule, "the host is going to sleep",
                                  failure_with_why=True)
        if sleep.waking_until is None:
            reason = "detached for sleep, waiting for the host to resume"
        else:
            self.wakeups.append(sleep.waking_until)
            left = max(0.0, sleep.waking_until - self.world.now)
            reason = f"back from sleep; attaching it again once devices have settled ({left:.1f}s)"
        return Assignment(device_id=d.id, state=State.SLEEPING,
                          guest=target.name if target is not None else "", rule=rule,
                          reason=reason)

    def _host(self, d: Device, held: Sequence[Holding], grounds: _Grounds) -> Assignment:
        """A person sent the device to the host: remove it from any guest, ours or not."""
        reason = "kept on the host by a manual override"
        if held:
            return self._take_out(d, held[0], "", reason, noted=grounds)
        return Assignment(device_id=d.id, state=State.HOST, rule="",
                          reason=grounds.noted(reason))

    def _ask(self, d: Device, decision: Decision, held: Sequence[Holding]) -> Assignment:
        """A device the person at the machine decides for; never moved without an answer."""
        rule = decision.rule
        name = rule.name if rule else ""
        label = f"rule '{name}' asks" if rule else "no rule matches and unmatched devices are asked"

        def stays(state: State, reason: str, guest: str = "") -> Assignment:
            return Assignment(device_id=d.id, state=state, guest=guest, rule=name, reason=reason)

        if decision.guest == "":
            reason = f"kept on the host by {_WHOSE[decision.rung]}"
            owned = _owned(held)
            if owned is not None:
                return self._take_out(d, owned, name, reason)
            if held:
                return stays(State.ATTACHED, f"{reason}, but attached outside phyllod",
                             held[0].guest.name)
            return stays(State.HOST, reason)
        if decision.guest is not None:
            return self._attach(d, decision.guest, _Grounds(
                rule=name, decided_by=f"by {_WHOSE[decision.rung]}"), held)
        ask = self.world.asks.get(d.id)
        if ask is not None and ask.outcome is AskOutcome.PENDING:
            return stays(State.ASKING, _asking(label, ask.candidates))
        if held:
            where = held[0].guest.name
            return stays(State.ATTACHED, f"{label}; left in '{where}' until someone answers",
                         where)
        if ask is not None and ask.outcome is AskOutcome.EXPIRED:
            return stays(State.HOST, f"{label}; no answer before the deadline, stays on the host")
        if ask is not None and ask.outcome is AskOutcome.UNASKED:
            return stays(State.HOST, f"{label}, but none of its guests was running when it "
                         "was plugged in; stays on the host")
        if d.id not in self.world.inserted:
            return stays(State.HOST, f"{label} only about devices plugged in while phyllod "
                         "runs; this one was present at start, stays on the host")
        candidates = self._candidates(rule)
        self.questions.append(Question(d.id, name, candidates))
        if not candidates:
            return stays(State.HOST, f"{label}, but none of its guests is running; stays on "
                         "the host")
        return stays(State.ASKING, _asking(label, candidates))

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

    def _deny(self, d: Device, rule: Rule, held: Sequence[Holding],
              override: Override | None) -> Assignment:
        reason = f"denied by rule '{rule.name}'"
        if override is not None and override.kind is OverrideKind.ATTACH:
            reason += f" (deny wins over the manual attach to '{override.guest}')"
        if held:
            return self._take_out(d, held[0], rule.name, reason, failure_with_why=True)
        return Assignment(device_id=d.id, state=State.DENIED, rule=rule.name, reason=reason)

    def _attach(self, d: Device, ref: str, grounds: _Grounds,
                held: Sequence[Holding]) -> Assignment:
        target = find_guest(ref, self.guests)
        name = target.name if target else ref

        def assignment(state: State, reason: str, guest: str = name) -> Assignment:
            return Assignment(device_id=d.id, state=state, guest=guest, rule=grounds.rule,
                              reason=grounds.noted(reason))

        here = [h for h in held if target is not None and h.guest.uuid == target.uuid]
        elsewhere = [h for h in held if h not in here]
        if here:
            warning = self._warning(d, grounds)
            return assignment(State.ATTACHED, f"attached to '{name}' {grounds.by_whom}{warning}")
        foreign = [h for h in elsewhere if not h.hostdev.owned]
        if foreign:
            other = foreign[0].guest.name
            return assignment(State.FAILED,
                              f"held by guest '{other}' outside phyllod; detach it there first")
        if elsewhere:
            h = elsewhere[0]
            return self._take_out(d, h, grounds.rule, f"{grounds.by_whom} it goes to '{name}'",
                                  leaving=f"moving from '{h.guest.name}' to '{name}'",
                                  noted=grounds)
        verdict, together = (self._pci_verdict(d, target, grounds) if d.subsystem is Subsystem.PCI
                             else (usb_verdict(d, self.world.host, grounds.allowed_risks),
                                   frozenset[str]()))
        if not verdict.ok:
            # Said before anything else: a person learns it before the guest even starts.
            return assignment(State.DENIED, f"not safe to pass: {verdict.reason()}")
        if target is None:
            return assignment(State.PENDING, f"no guest '{name}' is defined")
        if not target.state.active:
            now = "stopping" if target.state is GuestState.STOPPING else "not running"
            return assignment(State.PENDING, f"guest '{name}' is {now}")
        if d.slot in self.stale_slots:
            # Its previous enumeration still holds a port in some guest:
            # free that first (stale() queues it) so ports never run out.
            return assignment(State.PENDING,
                              "waiting for its previous plug to be removed from the guest")
        prepare: tuple[str, ...] = ()
        warning = f"; {verdict.reason()}" if verdict.warnings else ""
        if d.subsystem is Subsystem.PCI:
            if d.iommu_group in self.groups_busy:
                return assignment(State.PENDING,
                                  f"waiting for the rest of IOMMU group {d.iommu_group}")
            functions = self.world.host.functions
            prepare = tuple(sorted(m for m in together if m in functions
                                   and functions[m].driver != "vfio-pci"))
        ok, failure = self._due(d.slot, OpKind.ATTACH, name)
        if not ok:
            return assignment(State.FAILED, failure)
        if d.iommu_group is not None:
            self.groups_busy.add(d.iommu_group)
        worded = grounds.decided_by or grounds.where_matched
        self.steps.append(Attach(slot=d.slot, device=d, guest=name, rule=grounds.rule,
                                 prepare=prepare, decided_by=grounds.by_whom if worded else "",
                                 reset=grounds.reset_first and d.subsystem is Subsystem.USB))
        return assignment(State.ATTACHING, f"attaching to '{name}' {grounds.by_whom}{warning}")

    def _pci_verdict(self, d: Device, target: Guest | None,
                     grounds: _Grounds) -> tuple[Verdict, frozenset[str]]:
        """The safety verdict, counting group mates that go to the same guest as safe
        (and bus mates that go there as reset along with it)."""
        along = frozenset(a for a, uuid in self.pci_targets.items()
                          if target is not None and uuid == target.uuid and a != d.address)
        together = along & frozenset(group_members(d.address, self.world.host))
        return pci_verdict(d.address, self.world.host, grounds.allowed_risks, together,
                           along), together

    def _warning(self, d: Device, grounds: _Grounds) -> str:
        """For a device already in a guest: the risks accepted that still apply."""
        verdict = (pci_verdict(d.address, self.world.host, grounds.allowed_risks)
                   if d.subsystem is Subsystem.PCI
                   else usb_verdict(d, self.world.host, grounds.allowed_risks))
        return f"; {verdict.reason()}" if verdict.ok and verdict.warnings else ""

    def stale(self, present: Container[str] | None = None) -> None:
        """Remove hostdevs phyllod placed for devices that are gone (``present``: the
        slots of the present devices, if known)."""
        if present is None:
            present = {d.slot for d in self.world.devices.values()}
        for h in self.holdings.stale:
            slot = h.hostdev.slot
            if slot in self.world.inflight:
                continue
            why = ("it came back with a new device number; removing the old one"
                   if slot in present else "the device is gone")
            self._detach(slot, h, why)


def _asking(label: str, candidates: tuple[str, ...]) -> str:
    offers = ", ".join(f"'{c}'" for c in candidates)
    return f"{label}: waiting for an answer ({offers} or the host)"
