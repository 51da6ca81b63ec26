"""open_bus: how ``--bus`` (system, session or an address) becomes a connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dbus_fast import BusType

from phyllod.bus.connect import describe, open_bus


class Recorded:
    """Stands in for dbus-fast's MessageBus: keeps what it was made with."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.connected = False

    async def connect(self) -> Recorded:
        self.connected = True
        return self


@pytest.mark.parametrize(("address", "unix_fds", "made_with", "said"), [
    ("system", False, {"bus_type": BusType.SYSTEM, "negotiate_unix_fd": False},
     "the system bus"),
    ("session", True, {"bus_type": BusType.SESSION, "negotiate_unix_fd": True},
     "the session bus"),
    ("unix:path=/run/x/bus", False,
     {"bus_address": "unix:path=/run/x/bus", "negotiate_unix_fd": False},
     "bus unix:path=/run/x/bus"),
    ("Session", False, {"bus_address": "Session", "negotiate_unix_fd": False}, "bus Session"),
])
def test_open_bus(address: str, unix_fds: bool, made_with: dict[str, Any], said: str):
    bus = asyncio.run(open_bus(address, bus_class=Recorded,  # type: ignore[type-var]
                               unix_fds=unix_fds))
    assert bus.kwargs == made_with and bus.connected
    assert describe(address) == said
