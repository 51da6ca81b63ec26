"""Fixtures for a private system bus, polkit (mock or real) and phyllod on that bus.

conftest.py imports them, so every integration test module can ask for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import private_bus
import pytest
import testbed
from logind_mock import MockLogind, allow_logind
from phyllod_on_bus import Phyllod


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
def stalling_polkit(system_bus: private_bus.PrivateSystemBus
                    ) -> Iterator[private_bus.StallingPolkit]:
    """polkit that never answers nobody's checks (until cancelled), and allows everyone else."""
    with private_bus.StallingPolkit(system_bus) as polkit:
        yield polkit


@pytest.fixture
def real_polkit(system_bus: private_bus.PrivateSystemBus) -> Iterator[private_bus.RealPolkit]:
    """The host's polkitd, knowing only phyllod's shipped actions and the built-in defaults."""
    why = private_bus.RealPolkit.available()
    if why:
        pytest.skip(why)
    with private_bus.RealPolkit(system_bus, [private_bus.SHIPPED_POLICY]) as polkit:
        yield polkit


@pytest.fixture
def logind_bus(system_bus: private_bus.PrivateSystemBus) -> private_bus.PrivateSystemBus:
    """The private system bus, where logind may live."""
    allow_logind(system_bus)
    return system_bus


@pytest.fixture
def mock_logind(logind_bus: private_bus.PrivateSystemBus) -> Iterator[MockLogind]:
    """python-dbusmock's logind (no PrepareForSleep of its own: tests emit it)."""
    mock = MockLogind(logind_bus).start()
    yield mock
    mock.stop()


@pytest.fixture
def phyllod(system_bus: private_bus.PrivateSystemBus, usb_testbed: testbed.UsbTestbed,
            tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Phyllod]:
    """phyllod (not started yet) on the private system bus, a keyboard in port 1-2."""
    usb_testbed.plug("1-2", devnum=5)
    p = Phyllod(system_bus, usb_testbed, tmp_path)
    yield p
    p.stop()
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else True
    if failed:
        print("--- daemon logs ---\n" + "\n---\n".join(p.logs))
