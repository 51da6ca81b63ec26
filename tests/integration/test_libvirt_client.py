"""The libvirt adapter against libvirt's test driver and a real private libvirtd."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import libvirt
import libvirtd
import pytest
from daemon_process import child_env
from factories import usb

from phyllod.core.hostdev_xml import usb_hostdev_xml
from phyllod.core.model import GuestState
from phyllod.host.libvirt_client import LibvirtClient, LibvirtError

pytestmark = pytest.mark.integration


class Recorder:
    """Collects the client's callbacks and checks they run on the loop's thread."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.events: asyncio.Queue[tuple[str, ...]] = asyncio.Queue()

    def _put(self, *item: str) -> None:
        assert threading.get_ident() == self.thread, "callback off the loop thread"
        self.events.put_nowait(item)

    def client(self, uri: str) -> LibvirtClient:
        return LibvirtClient(uri, lambda n, run, ending: self._put("guest", n, run, ending),
                             lambda n, a: self._put("removed", n, a),
                             lambda r: self._put("lost", r))

    async def wait(self, *item: object, timeout: float = 10.0) -> tuple:
        """The first event starting with ``item`` (a guest event: name, run, ending)."""
        async def until() -> tuple:
            while (event := await self.events.get())[:len(item)] != item:
                pass
            return event
        return await asyncio.wait_for(until(), timeout)


async def test_guests_and_lifecycle_events_with_the_test_driver():
    # Debug mode makes asyncio raise if anything touches the loop from another thread.
    asyncio.get_running_loop().set_debug(True)
    rec = Recorder()
    client = rec.client("test:///default")
    await client.connect()
    try:
        guests = await client.guests()
        assert guests["test"].state is GuestState.RUNNING
        other = libvirt.open("test:///default")  # shared with our connection in-process
        dom = other.lookupByName("test")
        for _ in range(20):
            dom.destroy()
            await rec.wait("guest", "test")
            g = await client.guest("test")
            assert g is not None and g.state is GuestState.SHUTOFF
            dom.create()
            await rec.wait("guest", "test")
        assert (await client.guest("nope")) is None
        other.close()
    finally:
        await client.close()


@pytest.fixture
def work_guest(private_libvirtd: libvirtd.PrivateLibvirtd) -> str:
    libvirtd.start_guest(private_libvirtd.uri, "work")
    return private_libvirtd.uri


async def test_real_libvirtd_attach_error_is_libvirts_own(work_guest: str):
    rec = Recorder()
    client = rec.client(work_guest)
    await client.connect()
    try:
        guests = await client.guests()
        assert guests["work"].state is GuestState.RUNNING and guests["work"].hostdevs == ()
        with pytest.raises(LibvirtError) as e:
            await client.attach("work", usb_hostdev_xml(usb(devnum=5)))
        # This machine kind's kernel has no USB: libvirt cannot even look.
        assert "/sys/bus/usb/devices" in e.value.message
        assert not e.value.connection_lost
        with pytest.raises(LibvirtError) as e:
            await client.detach("work", "ua-phyllod-usb1-2-5")
        assert "no device found with alias" in e.value.message
        assert (await client.guest("work")).hostdevs == ()
    finally:
        await client.close()


async def test_losing_libvirtd_is_reported_and_a_reconnect_works(
        work_guest: str, private_libvirtd: libvirtd.PrivateLibvirtd):
    rec = Recorder()
    client = rec.client(work_guest)
    await client.connect()
    private_libvirtd.stop()
    await rec.wait("lost", "libvirtd closed the connection")
    assert not client.connected
    with pytest.raises(LibvirtError):
        await client.guests()
    private_libvirtd.start()
    await client.connect()
    try:
        # The guest outlived libvirtd, which found it again.
        assert (await client.guests())["work"].state is GuestState.RUNNING
    finally:
        await client.close()


async def test_lifecycle_events_say_which_run_and_whether_it_ends():
    """A guest's run (libvirt's domain id) changes at every start; STOPPED says its run
    ended (issue 16: the daemon ends the run at once, before any re-read)."""
    rec = Recorder()
    client = rec.client("test:///default")
    await client.connect()
    other = libvirt.open("test:///default")
    try:
        dom = other.lookupByName("test")
        before = (await client.guest("test")).run
        assert before == dom.ID() > 0
        dom.destroy()
        assert await rec.wait("guest", "test") == ("guest", "test", -1, True)
        assert (await client.guest("test")).run == -1
        dom.create()
        _, _, run, ending = await rec.wait("guest", "test")
        assert (run, ending) == (dom.ID(), False) and run != before
        assert (await client.guest("test")).run == run
    finally:
        other.close()
        await client.close()


HUNG_OPEN = """\
import asyncio, sys
from phyllod.host.libvirt_client import LibvirtClient

async def main():
    client = LibvirtClient(sys.argv[1], lambda *a: None, lambda *a: None, lambda *a: None)
    try:
        await asyncio.wait_for(client.connect(), 1.0)
    except TimeoutError:
        print("open hung", flush=True)
    await client.close()

asyncio.run(main())
"""


def test_a_hung_libvirtd_never_keeps_the_process_from_exiting(
        private_libvirtd: libvirtd.PrivateLibvirtd):
    """libvirt.open() to a frozen libvirtd never returns; the call's worker thread must
    not be joined at exit (ThreadPoolExecutor's are), or SIGTERM never ends phyllod."""
    with libvirtd.frozen(private_libvirtd):
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(HUNG_OPEN),
                            private_libvirtd.uri], capture_output=True, text=True, timeout=60,
                           env=child_env())
        assert (r.returncode, r.stdout) == (0, "open hung\n"), r.stderr


def _count_lookups(client: LibvirtClient) -> list[str]:
    """Every lookupByName the client's connection makes from now on."""
    conn = client._conn
    assert conn is not None
    seen: list[str] = []
    real = conn.lookupByName

    def counted(name: str) -> libvirt.virDomain:
        seen.append(name)
        return real(name)

    conn.lookupByName = counted  # type: ignore[method-assign]
    return seen


async def test_attach_and_detach_look_the_guest_up_once_per_guest_life(
        work_guest: str, private_libvirtd: libvirtd.PrivateLibvirtd):
    """A lookup is a round trip on the way to every attach (issue 18): the handle is
    kept, until the guest's next lifecycle event, or a call that meets it gone."""
    rec = Recorder()
    client = rec.client(work_guest)
    await client.connect()
    other = libvirt.open(work_guest)
    try:
        looked = _count_lookups(client)
        for _ in range(3):
            with pytest.raises(LibvirtError, match="no device found with alias"):
                await client.detach("work", "ua-phyllod-usb1-2-5")
        assert looked == ["work"]
        # The name goes to another domain: its lifecycle events drop the handle.
        old = other.lookupByName("work")
        old.destroy()
        old.undefine()
        libvirtd.start_guest(work_guest, "work")
        await rec.wait("guest", "work", timeout=30)
        looked.clear()
        with pytest.raises(LibvirtError, match="no device found with alias"):
            await client.detach("work", "ua-phyllod-usb1-2-5")
        assert looked == ["work"]
        # A kept handle whose domain is gone before any event: looked up again once.
        client._domains["work"] = old
        looked.clear()
        with pytest.raises(LibvirtError, match="no device found with alias"):
            await client.detach("work", "ua-phyllod-usb1-2-5")
        assert looked == ["work"]
    finally:
        other.close()
        await client.close()
