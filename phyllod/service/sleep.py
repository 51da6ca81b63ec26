"""Sleep: logind's PrepareForSleep, the delay inhibitor, and when it is released.

Going to sleep puts the snapshot to sleep (reconcile takes USB devices back
from their guests); phyllod lets the sleep proceed once nothing is leaving any
more (:func:`still_leaving`, pure) or the inhibitor's time is nearly up. After
resume, devices get ``resume_settle`` to come back before any is attached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Set
from typing import Any, Protocol

from phyllod.core.model import Assignment, State
from phyllod.core.plan import Detach, Plan, Sleep
from phyllod.host.systemd_glue import MessageId
from phyllod.service.journal import fields, log


class Inhibitor(Protocol):
    """What this part needs of logind's delay inhibitor (bus/logind's SleepWatcher)."""

    @property
    def max_delay(self) -> float: ...

    @property
    def holding(self) -> bool: ...

    def release(self) -> None: ...

    async def reacquire(self) -> None: ...


def still_leaving(plan: Plan) -> bool:
    """Whether devices are still on their way out of their guests in ``plan``."""
    return any(isinstance(step, Detach) for step in plan.steps) or any(
        a.state is State.DETACHING for a in plan.assignments.values())


class HostSleep:
    """The host's sleep as devices see it (None: awake), and the devices that left
    their guests for it (``taken_for_sleep``, to say which did not come back)."""

    def __init__(self, *, inhibitor: Inhibitor | None, resume_settle: float,
                 assignments: Callable[[], Mapping[str, Assignment]],
                 present: Callable[[], Set[str]], forget_failures: Callable[[], None],
                 spawn: Callable[[Coroutine[Any, Any, None]], None],
                 changed: Callable[[], None]) -> None:
        self._inhibitor = inhibitor
        self._resume_settle = resume_settle
        self._assignments = assignments
        self._present = present
        self._forget_failures = forget_failures
        self._spawn = spawn
        self._changed = changed
        self.sleep: Sleep | None = None
        self.taken_for_sleep: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    def on_prepare_for_sleep(self, going: bool) -> None:
        loop = asyncio.get_running_loop()
        self._stop_timer()
        if going:
            assert self._inhibitor is not None
            self.sleep = Sleep()
            self.taken_for_sleep.clear()
            # Leave logind a margin: never make the sleep wait out its maximum.
            budget = max(0.0, self._inhibitor.max_delay * 0.8)
            self._timer = loop.call_later(budget, self.let_sleep, True)
            log.info("the host is going to sleep; taking back USB devices (at most %.1fs)",
                     budget, **fields(event=MessageId.SLEEP))
        else:
            self.sleep = Sleep(waking_until=loop.time() + self._resume_settle)
            self._timer = loop.call_later(self._resume_settle, self._changed)
            self._forget_failures()
            log.info("the host resumed; attaching devices again in %.1fs",
                     self._resume_settle, **fields(event=MessageId.RESUME))
            if self._inhibitor is not None:
                self._spawn(self._inhibitor.reacquire())
        self._changed()

    def let_sleep(self, out_of_time: bool = False) -> None:
        """Release the inhibitor: logind proceeds with the sleep."""
        self._stop_timer()
        if self._inhibitor is None or not self._inhibitor.holding:
            return
        still = sorted(device_id for device_id, a in self._assignments().items()
                       if a.state is State.DETACHING)
        if out_of_time and still:
            log.warning("sleep cannot wait longer; still in guests: %s", ", ".join(still),
                        **fields(event=MessageId.SLEEP))
        else:
            log.info("ready for sleep: %d devices taken back", len(self.taken_for_sleep),
                     **fields(event=MessageId.SLEEP))
        self._inhibitor.release()

    def after_turn(self, plan: Plan) -> None:
        """Asleep: note who left for it; once nothing is leaving, let the sleep go on.
        Waking: once the settle window is over, the sleep is over."""
        if self.sleep is None:
            return
        if self.sleep.waking_until is not None:
            if asyncio.get_running_loop().time() >= self.sleep.waking_until:
                self.sleep = None
                missing = sorted(self.taken_for_sleep - self._present())
                if missing:
                    log.warning("not back after sleep: %s", ", ".join(missing),
                                **fields(event=MessageId.RESUME))
                self.taken_for_sleep.clear()
                self._changed()
            return
        self.taken_for_sleep |= {device_id for device_id, a in plan.assignments.items()
                                 if a.state is State.SLEEPING}
        if not still_leaving(plan):
            self.let_sleep()

    def cancel(self) -> None:
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
