"""One-shot timers by key, for the parts that wait on something per device or request.

Not a part: it holds no state of phyllod's and decides nothing. The plugs
wait out an unplug's debounce window per device, the host binds a grace per
slot, the asks a deadline per request; each used to keep its own dict of
``TimerHandle`` with the same pop-and-cancel code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Timers(Generic[K]):
    """At most one pending call per key; a call that fires is forgotten first."""

    def __init__(self) -> None:
        self._handles: dict[K, asyncio.TimerHandle] = {}

    def start(self, key: K, delay: float, callback: Callable[..., None], *args: Any) -> None:
        """Call ``callback(*args)`` in ``delay`` seconds, instead of any call pending for key."""
        self.stop(key)
        self._handles[key] = asyncio.get_running_loop().call_later(
            delay, self._fire, key, callback, args)

    def stop(self, key: K) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def stop_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def _fire(self, key: K, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self._handles.pop(key, None)
        callback(*args)
