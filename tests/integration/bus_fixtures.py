"""Fixtures for a private system bus and a polkit mock (see private_bus).

Kept out of conftest.py so test modules import just what they use:
``from bus_fixtures import mock_polkit, real_polkit, system_bus``.
"""

from __future__ import annotations

from collections.abc import Iterator

import private_bus
import pytest


@pytest.fixture
def system_bus() -> Iterator[private_bus.PrivateSystemBus]:
    """A fresh bus per test: name ownership and policy state never leak between tests."""
    why = private_bus.available()
    if why:
        pytest.skip(why)
    with private_bus.PrivateSystemBus() as bus:
        yield bus


@pytest.fixture
def mock_polkit(system_bus: private_bus.PrivateSystemBus) -> Iterator[private_bus.MockPolkit]:
    """polkit that denies every action until the test calls ``set_allowed``."""
    with private_bus.MockPolkit(system_bus) as polkit:
        yield polkit


@pytest.fixture
def real_polkit(system_bus: private_bus.PrivateSystemBus) -> Iterator[private_bus.RealPolkit]:
    """The host's polkitd, knowing only phyllod's shipped actions and the built-in defaults."""
    why = private_bus.RealPolkit.available()
    if why:
        pytest.skip(why)
    with private_bus.RealPolkit(system_bus, [private_bus.SHIPPED_POLICY]) as polkit:
        yield polkit
