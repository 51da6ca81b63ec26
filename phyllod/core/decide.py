"""The one precedence ladder: which of a device's inputs decides where it goes.

Several things may speak for a device at once: the policy's first matching
rule, a person's manual override (``phyllodctl attach``/``detach``), the
answer to the question about this plug, an answer remembered for good. The
ladder says which one decides, highest first:

1. **deny**: a ``deny`` rule; nothing a person says moves a denied device.
2. **override**: a person's explicit choice wins over every other rule.
3. **answer**: where the rule asks (an ``ask`` rule, or ``unmatched = "ask"``
   with no rule), the answer given for this plug;
4. **remembered**: failing that, an answer remembered for the device;
5. **ask**: failing both, nobody has answered yet: nothing moves;
6. **rule**: an ``attach`` or ``ignore`` rule;
7. **unmatched**: no rule matches: the device stays on the host.

Answers count only where the rule asks: an attach rule added later wins over
an answer remembered before it. Reconcile, its picture while libvirt is away,
and the daemon's check of a manual attach all ask :func:`decide`, so the order
is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from phyllod.core.model import Ask, AskOutcome, Device, Override, OverrideKind
from phyllod.core.policy import Action, Policy, Rule, Unmatched


class Rung(StrEnum):
    """The rung of the ladder that decides, highest first."""

    DENY = "deny"
    OVERRIDE = "override"
    ANSWER = "answer"
    REMEMBERED = "remembered"
    ASK = "ask"
    RULE = "rule"
    UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the deciding rung says for one device.

    ``guest`` is the guest (name or UUID, as given) the device is sent to, ""
    for the host, None where the rung names no place: a deny, an ignore rule
    (the device stays where it is), an open question, no rule. ``rule`` is the
    first matching rule whichever rung decides (a note on an override says
    what it would do); ``override`` the person's choice, in force or not.
    """

    rung: Rung
    guest: str | None
    rule: Rule | None
    override: Override | None


def decide(policy: Policy, device: Device, *, override: Override | None = None,
           ask: Ask | None = None, remembered: str | None = None) -> Decision:
    """Which input decides for ``device`` and what it says (see the module's ladder).

    ``override`` is the device's manual override (by identity), ``ask`` where
    the question about this plug stands (by id), ``remembered`` the answer kept
    for its identity (a guest, or "" for the host).
    """
    return ladder(policy, policy.match(device), override=override, ask=ask,
                  remembered=remembered)


def ladder(policy: Policy, rule: Rule | None, *, override: Override | None = None,
           ask: Ask | None = None, remembered: str | None = None) -> Decision:
    """:func:`decide` for a device whose first matching rule is already known
    (``rule``): the incremental planner keeps each device's match while the
    device and the policy stay the same, so a turn matches only the devices
    that changed."""
    if rule is not None and rule.action is Action.DENY:
        rung, guest = Rung.DENY, None
    elif override is not None:
        rung = Rung.OVERRIDE
        guest = override.guest if override.kind is OverrideKind.ATTACH else ""
    elif _rule_asks(policy, rule):
        if ask is not None and ask.outcome is AskOutcome.ANSWERED:
            rung, guest = Rung.ANSWER, ask.guest
        elif remembered is not None:
            rung, guest = Rung.REMEMBERED, remembered
        else:
            rung, guest = Rung.ASK, None
    elif rule is None:
        rung, guest = Rung.UNMATCHED, None
    else:
        rung, guest = Rung.RULE, rule.guest if rule.action is Action.ATTACH else None
    return Decision(rung, guest, rule, override)


def _rule_asks(policy: Policy, rule: Rule | None) -> bool:
    """Whether the person at the machine decides where the rule leaves it: an ask
    rule, or no rule under ``unmatched = "ask"``."""
    if rule is not None:
        return rule.action is Action.ASK
    return policy.settings.unmatched is Unmatched.ASK


def policy_note(rule: Rule | None, override: Override) -> str:
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
