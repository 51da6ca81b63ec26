"""Every way a device is taken out of its guest, as a table: the reason while it
leaves, and while a failed detach backs off (each way words them as it always has)."""

from __future__ import annotations

import pytest
from factories import guest, held, policy, usb

from phyllod.core.model import Ask, AskOutcome, Override, OverrideKind, State
from phyllod.core.plan import Detach, OpKind, Sleep, World, record_failure
from phyllod.core.reconcile import reconcile

KBD = usb(vendor="0627")
DENY = policy('[[rule]]\nname="never"\nmatch={vendor="0627"}\naction="deny"\n')
TO_WORK = policy('[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="work"\n')
TO_DESK = policy('[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="desk"\n')
ASK = policy('[[rule]]\nname="which"\nmatch={vendor="0627"}\naction="ask"\n')
NONE = policy('[[rule]]\nname="other"\nmatch={vendor="1050"}\nguest="work"\n')
HOST = {KBD.identity: Override(kind=OverrideKind.HOST)}
ANSWERED_HOST = {KBD.id: Ask(outcome=AskOutcome.ANSWERED, guest="")}
FAILED = "detach failed (attempt 1, retry in 0.5s): busy"

WAYS = [
    # (what, policy, World extras, rule shown, detach's why, reason leaving, reason backing off)
    ("denied", DENY, {}, "never", "denied by rule 'never'",
     "denied by rule 'never'; removing it from 'work'", f"denied by rule 'never'; {FAILED}"),
    ("no rule any more", NONE, {}, "", "no rule matches it any more",
     "no rule matches it any more", FAILED),
    ("the host sleeps", TO_WORK, {"sleep": Sleep()}, "kbd", "the host is going to sleep",
     "the host is going to sleep; removing it from 'work'",
     f"the host is going to sleep; {FAILED}"),
    ("kept on the host by hand", TO_WORK, {"overrides": HOST}, "",
     "kept on the host by a manual override",
     "kept on the host by a manual override; removing it from 'work'; "
     "rule 'kbd' would send it to 'work'", f"{FAILED}; rule 'kbd' would send it to 'work'"),
    ("answered: the host", ASK, {"asks": ANSWERED_HOST}, "which",
     "kept on the host by your answer", "kept on the host by your answer; removing it from "
     "'work'", FAILED),
    ("moving to another guest", TO_DESK, {}, "kbd", "by rule 'kbd' it goes to 'desk'",
     "moving from 'work' to 'desk'", FAILED),
]


def _world(p_extras: dict, failed: bool) -> World:
    failures = ({KBD.slot: record_failure(None, OpKind.DETACH, "work", "busy", 0.0)}
                if failed else {})
    return World(devices={KBD.id: KBD}, failures=failures,
                 guests={g.name: g for g in (guest("work", hostdevs=(held(KBD),)),
                                             guest("desk"))}, **p_extras)


@pytest.mark.parametrize(("p", "extras", "rule", "why", "leaving", "backing_off"),
                         [w[1:] for w in WAYS], ids=[w[0] for w in WAYS])
def test_taken_out_of_its_guest(p, extras, rule, why, leaving, backing_off):
    plan = reconcile(p, _world(extras, failed=False))
    assert plan.steps == (Detach(slot=KBD.slot, guest="work", hostdev=held(KBD), why=why,
                                 device_id=KBD.id),)
    a = plan.assignments[KBD.id]
    assert (a.state, a.guest, a.rule, a.reason) == (State.DETACHING, "work", rule, leaving)
    plan = reconcile(p, _world(extras, failed=True))
    assert plan.steps == () and plan.wake_at == 0.5
    a = plan.assignments[KBD.id]
    assert (a.state, a.guest, a.rule, a.reason) == (State.FAILED, "work", rule, backing_off)
