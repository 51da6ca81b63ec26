"""Guest runs in the pure core: a host driver's bind judged, and marks void with their run.

Issue 16: when a guest stopped, QEMU let go of a keyboard, usbhid bound it on
the host, and phyllod took that for a reset on the host: it sent a detach to
the stopping guest and, with the mark outliving the run, detached and
attached the keyboard again in the guest's next run. The tables below are
the decisions that keep a stop from looking like a reset, in every order.
"""

from __future__ import annotations

import pytest
from factories import guest, held, policy, usb

from phyllod.core.guest_runs import (
    BindVerdict,
    HostBind,
    Run,
    host_bind,
    judge_bind,
    run_of,
    without_ending,
)
from phyllod.core.model import Assignment, GuestState, State
from phyllod.core.plan import Attach, Detach, Operation, OpKind, World, record_failure
from phyllod.core.reconcile import reconcile

KBD = policy('[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="work"\n')
D = usb()
UUID = "6f1c0b36-7a4e-4c52-9d0e-2b8f3a1c9e70"


def work(state: GuestState = GuestState.RUNNING, run: int = 7, holds: bool = True):
    return guest("work", state, (held(D),) if holds else (), uuid=UUID, run=run)


RUN = Run(UUID, 7)
ATTACHED = Assignment(device_id=D.id, state=State.ATTACHED, guest="work", rule="kbd",
                      reason="attached to 'work' by rule 'kbd'")


def world(guests, **kw) -> World:
    return World(devices={D.id: D}, guests={g.name: g for g in guests}, **kw)


# ------------------------------------------------------------------ the first look, at the bind

@pytest.mark.parametrize(("assignment", "guests", "inflight", "mark"), [
    # Attached by phyllod, the guest runs and holds our hostdev: watched.
    (ATTACHED, [work()], set(), HostBind(run=RUN, guest="work", alias=D.alias, driver="usbhid")),
    # phyllod's own attach or detach is under way: binds are expected.
    (ATTACHED, [work()], {D.slot}, None),
    # Not attached (pending, host, failed): nothing of ours to repair.
    (Assignment(device_id=D.id, state=State.PENDING, guest="work", rule="kbd",
                reason="guest 'work' is not running"),
     [work(GuestState.SHUTOFF)], set(), None),
    (Assignment(device_id=D.id, state=State.HOST, guest="", rule="", reason="no rule matches"),
     [work()], set(), None),
    # The guest is gone from the snapshot, or not running any more.
    (ATTACHED, [], set(), None),
    (ATTACHED, [work(GuestState.SHUTOFF)], set(), None),
    # Held by a hostdev a person placed: not ours.
    (ATTACHED, [guest("work", hostdevs=(held(D, owned=False),), uuid=UUID, run=7)], set(),
     None),
])
def test_which_binds_leave_a_mark(assignment, guests, inflight, mark):
    got = host_bind(D.slot, "usbhid", assignment, {g.name: g for g in guests}, inflight,
                    frozenset())
    assert got == mark


# ------------------------------------------------------------------ the judgement

WATCHED = HostBind(run=RUN, guest="work", alias=D.alias, driver="usbhid")
CHECKED = HostBind(run=RUN, guest="work", alias=D.alias, driver="usbhid", checked=True)


@pytest.mark.parametrize(("order", "bind", "guest_now", "ending", "verdict"), [
    # The bind, then nothing yet: too early to tell.
    ("bind; no news yet", WATCHED, work(), set(), BindVerdict.WATCH),
    # The bind, then libvirt's STOPPED or SHUTDOWN (the snapshot not yet re-read).
    ("bind, then STOPPED", WATCHED, work(), {RUN}, BindVerdict.LET_GO),
    ("bind, then STOPPED, re-read", WATCHED, work(GuestState.SHUTOFF, run=-1, holds=False),
     set(), BindVerdict.LET_GO),
    ("bind, then SHUTDOWN, re-read", WATCHED, work(GuestState.STOPPING, holds=False), set(),
     BindVerdict.LET_GO),
    # STOPPED and the bind in the same loop turn, before any re-read.
    ("STOPPED, then the bind", WATCHED, work(), {RUN}, BindVerdict.LET_GO),
    # The guest stopped and started again between two reads: another run.
    ("stop and start between reads", CHECKED, work(run=8), set(), BindVerdict.LET_GO),
    ("undefined meanwhile", CHECKED, None, set(), BindVerdict.LET_GO),
    # Re-read after the grace window: runs on, its live XML still has our hostdev
    # (dead now): a reset on the host took it back.
    ("bind; re-read: runs on, holds it", CHECKED, work(), set(), BindVerdict.TAKEN_BACK),
    # ... or its hostdev is gone from the live XML: released, nothing to repair.
    ("bind; re-read: runs on, released it", CHECKED, work(holds=False), set(),
     BindVerdict.LET_GO),
    # A fake reboot's SHUTDOWN was taken back by its RESUMED (ending is empty again).
    ("SHUTDOWN then RESUMED, same run", CHECKED, work(), set(), BindVerdict.TAKEN_BACK),
])
def test_was_it_taken_back_or_let_go(order, bind, guest_now, ending, verdict):
    assert judge_bind(bind, guest_now, frozenset(ending)) is verdict, order


def test_a_run_is_the_uuid_and_the_domain_id_of_a_guest_that_can_hold_devices():
    assert run_of(work()) == RUN
    assert run_of(work(run=8)) != RUN
    for state in (GuestState.SHUTOFF, GuestState.STOPPING, GuestState.CRASHED):
        assert run_of(work(state)) is None
    assert run_of(None) is None


# ------------------------------------------------------------------ reconcile over runs

def test_an_ending_run_is_sent_nothing_and_holds_nothing():
    """STOPPED arrived, the re-read has not: no detach to the stopping guest (not even
    for a deny), no attach, and the reason says it is stopping."""
    plan = reconcile(KBD, world([work()], ending=frozenset({RUN})))
    assert plan.steps == ()
    a = plan.assignments[D.id]
    assert (a.state, a.guest, a.reason) == (State.PENDING, "work", "guest 'work' is stopping")
    deny = policy('[[rule]]\nname="no"\nmatch={vendor="0627"}\naction="deny"\n')
    assert reconcile(deny, world([work()], ending=frozenset({RUN}))).steps == ()
    # Unplugged meanwhile: the stale hostdev of a stopping guest is not chased either.
    gone = World(devices={}, guests={"work": work()}, ending=frozenset({RUN}))
    assert reconcile(KBD, gone).steps == ()
    assert without_ending({"work": work()}, frozenset({RUN}))["work"].hostdevs == ()


@pytest.mark.parametrize(("bind", "guest_now", "ending"), [
    (WATCHED, work(), {RUN}),
    (CHECKED, work(GuestState.SHUTOFF, run=-1, holds=False), set()),
    (CHECKED, work(run=8), set()),
])
def test_a_mark_of_a_run_that_ended_is_dropped_and_moves_nothing(bind, guest_now, ending):
    """The blink: a mark outliving its run made the next run's attach be detached and
    attached again. Now the next reconcile names it for the daemon to drop."""
    plan = reconcile(KBD, world([guest_now], binds={D.slot: bind}, ending=frozenset(ending)))
    assert plan.let_go == (D.slot,)
    assert not [a for a in plan.steps if isinstance(a, Detach)]


def test_the_next_run_gets_one_attach_and_no_detach():
    """After the stop, the new run (another domain id) does not hold the keyboard:
    exactly one attach, whatever was noted about the previous run."""
    stale = record_failure(None, OpKind.DETACH, "work", "domain is not running", 10.0, RUN)
    plan = reconcile(KBD, world([work(run=8, holds=False)], binds={D.slot: CHECKED},
                                failures={D.slot: stale}, now=10.1))
    assert plan.steps == (Attach(slot=D.slot, device=D, guest="work", rule="kbd"),)
    assert plan.let_go == (D.slot,)


def test_a_failure_counts_for_its_run_only():
    """A backoff recorded against one run does not hold back the next run, and the
    attempts are counted afresh for it."""
    first = record_failure(None, OpKind.ATTACH, "work", "e", 0.0, RUN)
    again = record_failure(first, OpKind.ATTACH, "work", "e", 0.1, RUN)
    assert again.attempts == 2
    assert record_failure(again, OpKind.ATTACH, "work", "e", 0.2, Run(UUID, 8)).attempts == 1
    backing_off = world([work(holds=False)], failures={D.slot: again}, now=0.2)
    assert reconcile(KBD, backing_off).steps == ()
    next_run = world([work(run=8, holds=False)], failures={D.slot: again}, now=0.2)
    assert reconcile(KBD, next_run).steps == (Attach(slot=D.slot, device=D, guest="work",
                                                     rule="kbd"),)


def test_own_calls_in_flight_are_left_to_finish():
    plan = reconcile(KBD, world([work()], binds={D.slot: CHECKED},
                                inflight={D.slot: Operation(OpKind.DETACH, "work", D.alias)}))
    assert plan.steps == () and plan.let_go == ()
