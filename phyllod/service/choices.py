"""Choices: a person's choices that outlive the process, and their persistence.

Manual overrides and remembered answers are kept by device identity under the
state directory. Saves run off the loop; the state lock keeps each
read-change-save-keep whole (two bus calls at once must not save from the
same copy). When serial_trust judges identities again (a twin came or went),
the choices follow the devices (``carry_choices``), also while a save ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TypeVar

from phyllod.core.bounds import excerpt
from phyllod.core.errors import Failed, NoSuchDevice
from phyllod.core.model import Device, Override
from phyllod.core.serial_trust import carry_choices
from phyllod.host.state_store import StateError, StateWriter, load_answers, load_overrides
from phyllod.host.systemd_glue import MessageId
from phyllod.service.journal import fields, log

T = TypeVar("T")
Save = Callable[[dict[str, T], dict[str, str]], asyncio.Future[None]]


def _log_failed_save(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("%s", future.exception())


class Choices:
    """The overrides and remembered answers in force (by identity), and the devices
    as last judged by serial_trust when they were carried along."""

    def __init__(self, *, state_dir: Path, devices: Callable[[], Mapping[str, Device]]) -> None:
        self._state_dir = state_dir
        self._devices = devices
        self._writer = StateWriter(state_dir)
        self._lock = asyncio.Lock()
        self._judged: dict[str, Device] = {}
        self.overrides: dict[str, Override] = {}
        self.remembered: dict[str, str] = {}

    def load(self) -> None:
        self.overrides = load_overrides(self._state_dir)
        if self.overrides:
            log.info("%d manual overrides from %s", len(self.overrides), self._state_dir)
        self.remembered = load_answers(self._state_dir)
        if self.remembered:
            log.info("%d remembered answers from %s", len(self.remembered), self._state_dir)

    def identities_judged(self, before: dict[str, Device], after: dict[str, Device],
                          touched: Collection[str] | None = None) -> None:
        """serial_trust judged the present set again: a device whose identity changed
        takes its choices along (saved in the background). ``touched``: the only
        devices whose judgement may have changed (None: any)."""
        self._judged = after
        overrides = carry_choices(self.overrides, before, after, touched)
        if overrides != self.overrides:
            self.overrides = overrides
            self._save_later(self._writer.save_overrides, overrides)
        remembered = carry_choices(self.remembered, before, after, touched)
        if remembered != self.remembered:
            self.remembered = remembered
            self._save_later(self._writer.save_answers, remembered)

    async def keep_override(self, d: Device, override: Override | None) -> None:
        """Persist a person's override for ``d`` (None: clear it); a failed save is Failed."""
        async with self._lock:
            judged = self._judged
            overrides = dict(self.overrides)
            if override is None:
                overrides.pop(d.identity, None)
            else:
                overrides[d.identity] = override
            if overrides == self.overrides:
                return
            self.overrides = await self._persist(self._writer.save_overrides, overrides,
                                                 judged, d.id)
            what = f"{override.kind} {override.guest}".strip() if override else "cleared"
            log.info("manual override for %s: %s", d.describe(), what,
                     **fields(device=d.id, guest=override.guest if override else "",
                              event=MessageId.OVERRIDE))

    async def remember(self, d: Device, guest: str) -> None:
        """Persist an answer for good: ``guest``, or "" for the host."""
        async with self._lock:
            judged = self._judged
            remembered = {**self.remembered, d.identity: guest}
            self.remembered = await self._persist(self._writer.save_answers, remembered,
                                                  judged, d.id)

    async def forget(self, identity: str) -> None:
        """Drop a remembered answer: the device is asked about again at its next plug."""
        async with self._lock:
            judged = self._judged
            if identity not in self.remembered:
                raise NoSuchDevice(f"no answer is remembered for {excerpt(identity)}")
            remembered = {k: v for k, v in self.remembered.items() if k != identity}
            self.remembered = await self._persist(self._writer.save_answers, remembered,
                                                  judged)
        log.info("forgot the remembered answer for %s", identity, **fields(device=identity))

    def _notes(self, by_identity: Mapping[str, object]) -> dict[str, str]:
        """Device descriptions for the entries of a state file, to help a reader."""
        return {d.identity: d.describe() for d in self._devices().values()
                if d.identity in by_identity}

    async def _persist(self, save: Save[T], choices: dict[str, T], judged: dict[str, Device],
                       device_id: str = "") -> dict[str, T]:
        """Save a person's choices (the caller holds the state lock) and return what is
        current then (_since); a failed save reaches the caller as Failed, and the log."""
        try:
            await save(choices, self._notes(choices))
        except StateError as e:
            log.error("%s", e, **fields(device=device_id))
            raise Failed(str(e)) from None
        return self._since(judged, choices, save)

    def _save_later(self, save: Save[T], choices: dict[str, T]) -> None:
        """Queue a save that no caller waits for (choices a device took along).

        It takes its place in the writer's line at once, so it is never
        overtaken; if it fails the choice still holds in memory for this run.
        """
        save(choices, self._notes(choices)).add_done_callback(_log_failed_save)

    def _since(self, judged: dict[str, Device], choices: dict[str, T], save: Save[T],
               ) -> dict[str, T]:
        """``choices`` as just saved, with what identities were judged since ``judged``
        (a twin came or went while the save ran) carried along, as
        identities_judged carried the choices that were current then."""
        if self._judged is judged:
            return choices
        carried = carry_choices(choices, judged, self._judged)
        if carried != choices:
            self._save_later(save, carried)
        return carried
