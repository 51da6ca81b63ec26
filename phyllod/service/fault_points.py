"""Fault injection seams: one-shot holds at named points of an attach or detach.

A reliability test has to kill phyllod at an exact step (before the libvirt
call, while it runs, after it returned but before phyllod took note) and
then check that a restart loses nothing and attaches nothing twice. Timing a
SIGKILL from outside cannot hit those steps, so the daemon offers them:
with ``$PHYLLOD_FAULT_DIR`` set, a file named after a point (``attach-running``)
arms it; the first time the point is reached the file is removed, a line
``fault point attach-running reached; holding`` is logged and the task
waits forever, for the test's SIGKILL. Without the variable (production)
every point is a no-op that costs one dictionary lookup.

Points: ``attach-before``, ``attach-running``, ``attach-returned`` and the
same three for ``detach``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("phyllod")
T = TypeVar("T")

_DIR = os.environ.get("PHYLLOD_FAULT_DIR", "")


def _armed(point: str) -> bool:
    """Whether ``point`` is armed; disarms it (one shot)."""
    if not _DIR:
        return False
    try:
        Path(_DIR, point).unlink()
    except OSError:
        return False
    return True


async def _hold(point: str) -> None:
    log.warning("fault point %s reached; holding", point)
    await asyncio.Event().wait()


async def point(name: str) -> None:
    """A seam between two moves of the work (a libvirt call returned...): hold if armed."""
    if _armed(name):
        await _hold(name)


def holds(name: str) -> bool:
    """Whether ``name`` is armed, without disarming it: a step whose call would be
    issued before the point is reached issues it after the point instead."""
    return bool(_DIR) and Path(_DIR, name).exists()


async def around(name: str, call: Awaitable[T]) -> T:
    """``call`` (a libvirt call already issued), with ``NAME-running`` and
    ``NAME-returned`` points.

    Armed ``-running``: the task holds while the call completes in the worker
    thread, so phyllod never sees its result.
    """
    if _armed(f"{name}-running"):
        await _hold(f"{name}-running")
    result = await call
    await point(f"{name}-returned")
    return result
