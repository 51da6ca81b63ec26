"""Publishing each reconcile's decisions: the journal, systemd's status, the bus.

Each change of a device's assignment is logged once, with its journal
fields; transitions (attaching, detaching) are logged by the step itself,
which names the libvirt call. Which assignments changed and what the status
line says are pure (:func:`changed`, :func:`status_line`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from phyllod.core.diff import changed_keys
from phyllod.core.model import Assignment, Device, State
from phyllod.host.systemd_glue import MessageId, notify
from phyllod.service.journal import fields, log

#: States a step logs itself (it names the libvirt call).
TRANSITIONS = (State.ATTACHING, State.DETACHING)


def changed(before: Mapping[str, Assignment],
            after: Mapping[str, Assignment]) -> list[Assignment]:
    """The assignments worth a log line: new or changed, and not in transition.

    A turn's assignments are mostly the very objects of the last (replan keeps
    them, or the whole mapping): only the others are compared."""
    return [after[device_id] for device_id in sorted(changed_keys(before, after))
            if device_id in after and after[device_id].state not in TRANSITIONS]


def status_line(assignments: Mapping[str, Assignment], libvirt_away: bool, uri: str,
                policy_broken: bool) -> str:
    """systemd's STATUS= (``systemctl status phyllod``): counts per state, and what
    keeps phyllod from deciding."""
    counts: dict[State, int] = {}
    for a in assignments.values():
        counts[a.state] = counts.get(a.state, 0) + 1
    parts = [f"{n} {state}" for state, n in sorted(counts.items()) if n]
    status = f"{len(assignments)} devices" + (f": {', '.join(parts)}" if parts else "")
    if libvirt_away:
        status += f"; waiting for libvirt at {uri}"
    if policy_broken:
        status += "; policy has errors"
    return status


class Publisher:
    """The assignments last published (by device id) and the status systemd shows."""

    def __init__(self, *, uri: str, devices: Callable[[], Mapping[str, Device]],
                 libvirt_away: Callable[[], bool], policy_broken: Callable[[], bool],
                 publish: Callable[[], None]) -> None:
        self._uri = uri
        self._devices = devices
        self._libvirt_away = libvirt_away
        self._policy_broken = policy_broken
        self._publish = publish
        #: The plan's own mapping: a plan's assignments are never changed after it is
        #: made (replan makes a new mapping when one changes), so none is copied.
        self.assignments: Mapping[str, Assignment] = {}
        self._status = ""
        self._counted: tuple[Mapping[str, Assignment], bool, bool] | None = None

    def report(self, assignments: Mapping[str, Assignment]) -> None:
        """Log what changed, keep the assignments, tell systemd and the bus."""
        devices = self._devices()
        for a in changed(self.assignments, assignments):
            d = devices.get(a.device_id)
            what = d.describe() if d else a.device_id
            where = f" guest={a.guest}" if a.guest else ""
            level = logging.WARNING if a.state is State.FAILED else logging.INFO
            log.log(level, "%s: %s%s: %s", what, a.state, where, a.reason,
                    **fields(a.device_id, a.guest, a.rule, a.state, MessageId.DECISION))
        self.assignments = assignments
        self.notify_status()
        self._publish()

    def notify_status(self) -> None:
        """Tell systemd the status line if it changed (counted again only when the
        assignments or the flags did)."""
        counted = (self.assignments, self._libvirt_away(), self._policy_broken())
        if self._counted is not None and counted[0] is self._counted[0] and \
                counted[1:] == self._counted[1:]:
            return
        self._counted = counted
        status = status_line(*counted[:2], self._uri, counted[2])
        if status != self._status:
            self._status = status
            notify(f"STATUS={status}")
