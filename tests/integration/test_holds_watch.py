"""The holds watch over the real kernel: a mount, a swap and a block device's uevent heard.

The mount is made in a mount namespace of its own (``unshare --mount``, its
/proc/PID/mountinfo watched): the host's mounts are not touched. The swap is
a 2 MiB swap file switched on and off again (skipped where the file system
or the machine refuses). The block device is a umockdev one, as udev tells it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import testbed

from phyllod.host.holds_watch import HoldsWatch

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(testbed.available()), reason=testbed.available())]


class Heard:
    """A watch on the running loop, and each change it told as an asyncio event."""

    def __init__(self, tables: tuple[Path, ...]) -> None:
        self.told = 0
        self._news = asyncio.Event()
        self.watch = HoldsWatch(self._told, tables)
        self.started = self.watch.start(asyncio.get_running_loop())

    def _told(self) -> None:
        self.told += 1
        self._news.set()

    async def after(self, change: object, quiet: float = 0.3, timeout: float = 5.0) -> int:
        """How many times the watch told of ``change`` (already made): waits for the
        first, then ``quiet`` seconds for any more (a change is told once)."""
        before = self.told
        self._news.clear()
        await asyncio.wait_for(self._news.wait(), timeout)
        await asyncio.sleep(quiet)
        return self.told - before


@pytest.fixture
def namespace() -> Iterator[int]:
    """A process in a mount namespace of its own (mounts made there stay there)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a mount namespace needs root and unshare(1)")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                             "sleep", "120"])
    try:
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{proc.pid}/ns/mnt") == ours:
            assert time.monotonic() < deadline, "unshare never entered its namespace"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _in(pid: int, *command: str) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-m", *command], check=True)


def test_a_mount_and_an_unmount_are_each_heard_once(namespace: int):
    testbed.UsbTestbed()  # the block monitor's libudev sees a testbed, not the host
    where = tempfile.mkdtemp(prefix="phyllod-watch-")

    async def main() -> list[int]:
        heard = Heard((Path(f"/proc/{namespace}/mountinfo"),))
        assert heard.started
        try:
            _in(namespace, "mount", "-t", "tmpfs", "phyllod-test", where)
            mounted = await heard.after("mount")
            _in(namespace, "umount", where)
            unmounted = await heard.after("umount")
            await asyncio.sleep(0.3)
            return [mounted, unmounted, heard.told]
        finally:
            heard.watch.stop()

    try:
        assert asyncio.run(main()) == [1, 1, 2]
    finally:
        os.rmdir(where)


def test_a_swap_switched_on_and_off_is_heard():
    testbed.UsbTestbed()
    if os.geteuid() != 0 or shutil.which("mkswap") is None:
        pytest.skip("swapon needs root and mkswap(8)")
    swap = Path("/var/tmp") / f"phyllod-watch-{os.getpid()}.swap"
    swap.write_bytes(bytes(2 << 20))
    swap.chmod(0o600)
    try:
        subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)

        async def main() -> list[int]:
            heard = Heard((Path("/proc/swaps"),))
            try:
                on = subprocess.run(["swapon", str(swap)], capture_output=True, text=True)
                if on.returncode != 0:
                    pytest.skip(f"swapon refused here: {on.stderr.strip()}")
                switched_on = await heard.after("swapon")
                subprocess.run(["swapoff", str(swap)], check=True)
                return [switched_on, await heard.after("swapoff")]
            finally:
                heard.watch.stop()

        assert asyncio.run(main()) == [1, 1]
    finally:
        subprocess.run(["swapoff", str(swap)], capture_output=True)
        swap.unlink()


def test_block_device_uevents_are_heard_and_usb_ones_are_not():
    """A stick's disk, a partition, one gone: each is news; a USB device alone is not
    (the loop's own USB uevents say what they change)."""
    tb = testbed.UsbTestbed()

    async def main() -> list[int]:
        heard = Heard(())  # the block devices' uevents only
        try:
            tb.plug("1-2", devnum=5, interfaces=("080650",))
            with pytest.raises(TimeoutError):
                await heard.after("a USB device", timeout=1.0)
            disk = tb.tb.add_device("block", "sdb", tb.paths["1-2:1.0"], ["dev", "8:16"],
                                    ["DEVTYPE", "disk"])
            added = await heard.after("sdb")
            tb.tb.uevent(disk, "remove")
            return [added, await heard.after("sdb gone")]
        finally:
            heard.watch.stop()

    assert asyncio.run(main()) == [1, 1]


def test_a_source_that_cannot_be_opened_leaves_nothing_watched(tmp_path: Path, caplog):
    testbed.UsbTestbed()

    async def main() -> bool:
        heard = Heard((tmp_path / "no such table",))
        assert heard.watch._poll is None and heard.watch._fds == []
        return heard.started

    with caplog.at_level(logging.WARNING, logger="phyllod.host.holds_watch"):
        assert asyncio.run(main()) is False
    assert "looked at again on every USB uevent" in caplog.text
