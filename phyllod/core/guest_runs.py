"""Guest runs: what phyllod notes about a guest holds for one run of it, never the next.

A guest's run is its UUID with libvirt's domain id, which changes at every
start. A failure record, a host driver's bind on a device in a guest, a
detach waiting for QEMU: each belongs to the run it concerned and is void
once that run ended (the guest stopped, crashed, or started again between
two looks), whatever the order in which the news arrived.

The hard case is a host driver binding a device phyllod had placed in a
guest. Two things look alike from the host: a reset or re-authorization on
the host took the device back from a guest that runs on (its hostdev is
dead: detach it and attach it again), and a guest stopping let go of it
(QEMU released it, usbhid bound it; libvirt's STOPPED comes just before or
just after). So a bind is only watched at first, and judged on a fresh read
of the guest after a grace window: pure functions over (the run that held
the device, the guest as re-read, the runs libvirt said are ending).
Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from enum import StrEnum

from phyllod.core.model import Assignment, Guest, GuestState, State


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a guest: its UUID and libvirt's domain id for this start."""

    uuid: str
    id: int


def run_of(guest: Guest | None) -> Run | None:
    """The run of a guest that can hold devices now, None when it does not run."""
    if guest is None or not guest.state.active:
        return None
    return Run(guest.uuid, guest.run)


def holds_on(guest: Guest | None, run: Run, ending: Set[Run]) -> bool:
    """Whether ``run`` is still the guest's current run and libvirt did not say it ends."""
    return run_of(guest) == run and run not in ending


def without_ending(guests: Mapping[str, Guest], ending: Set[Run]) -> dict[str, Guest]:
    """The guests as reconcile must see them: a run libvirt said is ending (STOPPED,
    SHUTDOWN) holds nothing and takes nothing, even before its re-read says so."""
    if not ending:
        return dict(guests)
    out = {}
    for name, g in guests.items():
        if run_of(g) in ending:
            g = Guest(name=g.name, uuid=g.uuid, state=GuestState.STOPPING, hostdevs=(), run=g.run)
        out[name] = g
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class HostBind:
    """A host driver bound to a device phyllod had placed in a running guest."""

    run: Run  # the run that held the device
    guest: str
    alias: str  # the hostdev phyllod placed, in that run's live XML
    driver: str
    #: The guest was read again after the grace window (until then: watched).
    checked: bool = False


class BindVerdict(StrEnum):
    WATCH = "watch"  # too early to tell: a stopping guest lets go before libvirt says so
    TAKEN_BACK = "taken back"  # the guest runs on with a dead hostdev: a reset on the host
    LET_GO = "let go"  # the guest stopped (or no longer holds it): nothing to repair


def host_bind(slot: str, driver: str, assignment: Assignment | None,
              guests: Mapping[str, Guest], inflight: Set[str],
              ending: Set[Run]) -> HostBind | None:
    """The mark a host driver's bind on the device of ``slot`` leaves, None if it says
    nothing: the device was not attached by phyllod's doing, or phyllod's own attach
    or detach is under way (binds are expected then)."""
    if assignment is None or assignment.state is not State.ATTACHED or slot in inflight:
        return None
    guest = guests.get(assignment.guest)
    run = run_of(guest)
    if guest is None or run is None:
        return None
    alias = next((h.alias for h in guest.hostdevs if h.owned and h.slot == slot), None)
    if alias is None:
        return None  # held by a person's hostdev: not ours to repair
    return HostBind(run=run, guest=guest.name, alias=alias, driver=driver)


def judge_bind(bind: HostBind, guest: Guest | None, ending: Set[Run]) -> BindVerdict:
    """Was the device taken back from its guest, or did the guest let go of it?

    ``guest`` is the guest as last read (by UUID, whatever its name now),
    ``ending`` the runs libvirt's lifecycle events said are over or stopping.
    """
    if not holds_on(guest, bind.run, ending):
        return BindVerdict.LET_GO
    assert guest is not None
    if not any(h.alias == bind.alias for h in guest.hostdevs):
        return BindVerdict.LET_GO  # released (QEMU, a person's detach): nothing dead left
    return BindVerdict.TAKEN_BACK if bind.checked else BindVerdict.WATCH
