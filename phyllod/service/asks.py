"""Asks: the requests open to a person ("where does this device go?").

Reconcile names the newly plugged devices to ask about; this part opens a
request for each (with a deadline timer), and an answer, the deadline, an
unplug or a decision taken out of the person's hands (a reload, an override,
a deny) closes it. When a request is withdrawn is :func:`withdrawal`, pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from phyllod.core.model import Ask, AskOutcome, Assignment, Device, Request, State
from phyllod.core.plan import Plan, Question
from phyllod.host.systemd_glue import MessageId
from phyllod.service.journal import fields, log
from phyllod.service.timers import Timers


def withdrawal(assignment: Assignment | None) -> str | None:
    """Why an open request is no longer the person's to answer (None while it is),
    given the device's assignment in the latest plan."""
    if assignment is None:
        return "the device is gone"
    if assignment.state is not State.ASKING:
        return assignment.reason
    return None


class Asks:
    """Where the question about each plug stands (by device id), the devices plugged
    in and not yet considered for a question, and the open requests (by number)."""

    def __init__(self, *, changed: Callable[[], None]) -> None:
        self._changed = changed
        self.standing: dict[str, Ask] = {}
        self.newly_plugged: set[str] = set()
        self.requests: dict[int, Request] = {}
        self._deadlines: Timers[int] = Timers()
        self._next_number = 1

    def new_plug(self, device_id: str) -> None:
        """A device plugged in (or enumerated again): a question may be asked about it."""
        self.plug_ended(device_id, "plugged in again")
        self.newly_plugged.add(device_id)

    def plug_ended(self, device_id: str, why: str) -> None:
        """An unplug or a new enumeration: the question about the previous plug is void."""
        self.standing.pop(device_id, None)
        self.newly_plugged.discard(device_id)
        for number, r in list(self.requests.items()):
            if r.device_id == device_id:
                self.close(number)
                log.info("request %d for %s withdrawn: %s", number, device_id, why,
                         **fields(device=device_id, event=MessageId.NOT_ANSWERED))

    def after_turn(self, plan: Plan, devices: Mapping[str, Device], ask_timeout: int) -> None:
        """Open the requests reconcile asks for; withdraw those no longer asked for.

        Called only after a reconcile that could decide (libvirt connected, a
        policy in force): only such a turn uses up ``newly_plugged``, so a
        device plugged in while libvirt is away is asked about once it is back.
        """
        for q in plan.questions:
            self._open(q, devices[q.device_id], ask_timeout)
        self.newly_plugged.clear()
        for number, r in list(self.requests.items()):
            why = withdrawal(plan.assignments.get(r.device_id))
            if why is not None:
                self.close(number)
                self.standing.pop(r.device_id, None)
                log.info("request %d for %s withdrawn: %s", number, r.device_id, why,
                         **fields(device=r.device_id, event=MessageId.NOT_ANSWERED))

    def answered(self, number: int, device_id: str, guest: str) -> None:
        """A person answered request ``number``: ``guest``, or "" for the host."""
        self.close(number)
        self.standing[device_id] = Ask(AskOutcome.ANSWERED, guest)

    def close(self, number: int) -> None:
        self.requests.pop(number, None)
        self._deadlines.stop(number)

    def cancel(self) -> None:
        self._deadlines.stop_all()

    def _open(self, q: Question, d: Device, timeout: int) -> None:
        if not q.candidates:
            self.standing[d.id] = Ask(AskOutcome.UNASKED)
            log.info("%s: not asked, none of the guests it may go to is running",
                     d.describe(), **fields(device=d.id, rule=q.rule))
            return
        number = self._next_number
        self._next_number += 1
        deadline = time.time_ns() // 1000 + timeout * 1_000_000  # µs, for the bus
        self.requests[number] = Request(
            number=number, device_id=d.id, description=d.describe(),
            candidates=q.candidates, deadline_usec=deadline, rule=q.rule)
        self._deadlines.start(number, timeout, self._expire, number)
        self.standing[d.id] = Ask(AskOutcome.PENDING, candidates=q.candidates)
        log.info("request %d: where does %s go? (%s or the host; %ds to answer)", number,
                 d.describe(), ", ".join(q.candidates), timeout,
                 **fields(device=d.id, rule=q.rule, event=MessageId.ASKED))

    def _expire(self, number: int) -> None:
        r = self.requests.get(number)
        if r is None:
            return
        self.close(number)
        self.standing[r.device_id] = Ask(AskOutcome.EXPIRED)
        log.info("request %d for %s: no answer before the deadline; it stays on the host",
                 number, r.device_id, **fields(device=r.device_id, rule=r.rule,
                                                event=MessageId.NOT_ANSWERED))
        self._changed()
