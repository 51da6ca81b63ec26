"""Host binds: a host driver binding a device phyllod placed in a guest.

Two things look alike from the host (core/guest_runs explains them): a reset
on the host took the device back from a guest that runs on (repair: detach,
attach again), or the guest let go of it as it stopped (nothing to do). A
bind is watched for ``release_grace``, then judged on the guest read again.
This part keeps the marks and their timers; the judging is
:func:`after_grace` over guest_runs' pure functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Set
from typing import Any

from phyllod.core.guest_runs import BindVerdict, HostBind, Run, holds_on, host_bind, judge_bind
from phyllod.core.model import Assignment, Device, Guest
from phyllod.service.journal import fields, log
from phyllod.service.timers import Timers


def after_grace(bind: HostBind, guest: Guest | None, ending: Set[Run],
                present: bool) -> HostBind | None:
    """The mark a watched bind leaves once its grace window is over: the checked bind
    if the host took the device back from a guest that runs on, None if the guest
    let go of it (or the device left meanwhile). The part then checks that a host
    driver still holds it: a bind may be a moment of a reset the guest made,
    after which its QEMU claimed the device back."""
    checked = dataclasses.replace(bind, checked=True)
    if present and judge_bind(checked, guest, ending) is BindVerdict.TAKEN_BACK:
        return checked
    return None


class HostBinds:
    """The host drivers' binds on devices in guests (by slot): watched, then judged."""

    def __init__(self, *, release_grace: float,
                 guests: Callable[[], Mapping[str, Guest] | None],
                 assignment: Callable[[str], Assignment | None],
                 inflight: Callable[[], Set[str]], ending: Callable[[], Set[Run]],
                 on_slot: Callable[[str], Device | None],
                 host_drivers: Callable[[Device], tuple[str, ...]],
                 refresh_guest: Callable[[str], Awaitable[None]],
                 spawn: Callable[[Coroutine[Any, Any, None]], None],
                 changed: Callable[[], None]) -> None:
        self._release_grace = release_grace
        self._guests = guests
        self._assignment = assignment
        self._inflight = inflight
        self._ending = ending
        self._on_slot = on_slot
        self._host_drivers = host_drivers
        self._refresh_guest = refresh_guest
        self._spawn = spawn
        self._changed = changed
        self.marks: dict[str, HostBind] = {}
        self._graces: Timers[str] = Timers()

    def host_bound(self, d: Device, driver: str) -> None:
        """A host driver bound ``d``: if phyllod placed it in a running guest, watch it."""
        guests = self._guests() or {}
        ending = self._ending()
        bind = host_bind(d.slot, driver, self._assignment(d.id), guests, self._inflight(),
                         ending)
        if bind is None:
            return  # not in a guest by phyllod's doing, or bound during our own call
        where = fields(device=d.id, guest=bind.guest)
        if judge_bind(bind, guests.get(bind.guest), ending) is BindVerdict.LET_GO:
            log.info("%s: the host's %s bound it as '%s' let go of it as it stopped; "
                     "not a reset", d.describe(), driver, bind.guest, **where)
            return
        self.unwatch(d.slot)
        self.marks[d.slot] = bind
        self._graces.start(d.slot, self._release_grace, self._grace_over, d.slot, bind)
        log.info("%s: the host's %s bound it while in '%s'; watching %.1fs whether '%s' "
                 "is letting go of it", d.describe(), driver, bind.guest,
                 self._release_grace, bind.guest, **where)

    def let_go(self, slot: str) -> None:
        """A watched bind was the guest letting go of the device: drop the mark."""
        bind = self.marks.get(slot)
        if bind is None:
            return
        self.unwatch(slot)
        d = self._on_slot(slot)
        if d is None:
            return
        how = ("released it" if holds_on(self._guest_of(bind), bind.run, self._ending())
               else "as it stopped")
        log.info("%s: '%s' let go of it %s; not a reset", d.describe(), bind.guest, how,
                 **fields(device=d.id, guest=bind.guest))

    def keep_present(self, slots: Set[str]) -> None:
        """Drop the marks of devices no longer present (they left with a rescan)."""
        for slot in self.marks.keys() - slots:
            self.unwatch(slot)

    def unwatch(self, slot: str) -> None:
        self.marks.pop(slot, None)
        self._graces.stop(slot)

    def cancel(self) -> None:
        self._graces.stop_all()

    def _grace_over(self, slot: str, bind: HostBind) -> None:
        self._spawn(self._judge(slot, bind))

    async def _judge(self, slot: str, bind: HostBind) -> None:
        """After the grace window: read the guest again, then judge the bind."""
        await self._refresh_guest(bind.guest)
        if self.marks.get(slot) != bind:
            return  # judged meanwhile (the run ended), or the device left
        if self._guests() is None:
            self.unwatch(slot)  # libvirt is away: its return resyncs every guest
            return
        d = self._on_slot(slot)
        taken_back = after_grace(bind, self._guest_of(bind), self._ending(), d is not None)
        if d is None or taken_back is None:
            self.let_go(slot)
        elif self._host_drivers(d):
            self.marks[slot] = taken_back
            log.warning("%s: the host's %s took it back while in '%s' (a reset on the "
                        "host?); attaching it again", d.describe(), bind.driver, bind.guest,
                        **fields(device=d.id, guest=bind.guest))
        else:
            self.unwatch(slot)
            log.info("%s: no host driver holds it any more: '%s' claimed it back after the "
                     "%s bind (a reset of the device by the guest); not a reset on the host",
                     d.describe(), bind.guest, bind.driver,
                     **fields(device=d.id, guest=bind.guest))
        self._changed()

    def _guest_of(self, bind: HostBind) -> Guest | None:
        """The guest whose run left ``bind``, as last read (by UUID: names may change)."""
        return next((g for g in (self._guests() or {}).values() if g.uuid == bind.run.uuid),
                    None)
