"""Fixtures with real parts: a private libvirtd, a umockdev testbed, the daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirtd
import pytest
import testbed
from bus_fixtures import (  # noqa: F401 (fixtures)
    logind_bus,
    mock_logind,
    mock_polkit,
    phyllod,
    real_polkit,
    stalling_polkit,
    system_bus,
)


@pytest.fixture(scope="session")
def libvirt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared /var/cache/libvirt: QEMU's capabilities are probed once per run."""
    return tmp_path_factory.mktemp("libvirt-cache")


@pytest.fixture
def private_libvirtd(tmp_path: Path, libvirt_cache: Path) -> Iterator[libvirtd.PrivateLibvirtd]:
    why = libvirtd.available()
    if why:
        pytest.skip(why)
    base = tmp_path / "libvirtd"
    base.mkdir()
    daemon = libvirtd.PrivateLibvirtd(base, libvirt_cache).start()
    try:
        yield daemon
    finally:
        daemon.kill_guests()
        daemon.stop()


@pytest.fixture
def usb_testbed() -> testbed.UsbTestbed:
    why = testbed.available()
    if why:
        pytest.skip(why)
    return testbed.UsbTestbed()


