"""The logind sleep adapter against python-dbusmock's logind on a private system bus.

The template's Inhibit hands out the write end of a pipe and forgets the
inhibitor when that end is closed (it watches the read end for HUP), and its
ListInhibitors lists what is held: so whether phyllod holds exactly one
inhibitor is checked on logind's side, and on ours in /proc/self/fd (every
pipe this process holds). The template has no PrepareForSleep and no
InhibitDelayMaxUSec: the signal is sent with the mock's EmitSignal, the
property added with its AddProperty.

The private bus is the one the other bus tests use (it denies by default, as
the system bus does); the part of systemd's logind bus policy that concerns
root, which is all phyllod (root) and this test (root) need, is added to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dbusmock
import private_bus
import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from logind_mock import MockLogind

from phyllod.bus import logind

PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
HELD = ("sleep", "phyllod", "Detach passed-through USB devices before sleep", "delay")


@pytest.fixture
async def control(logind_bus: private_bus.PrivateSystemBus) -> AsyncIterator[MessageBus]:
    """The test's own connection, to steer the mock and to forge signals."""
    bus = await MessageBus(bus_address=logind_bus.address).connect()
    yield bus
    bus.disconnect()


async def call(bus: MessageBus, interface: str, member: str, signature: str = "",
               body: list | None = None) -> list:
    """A call to the mock's main object; its reply's body, or AssertionError."""
    reply = await bus.call(Message(destination=logind.LOGIND, path=PATH, interface=interface,
                                   member=member, signature=signature, body=body or []))
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return reply.body


async def emit_prepare(bus: MessageBus, before: bool) -> None:
    """Have the mock (as logind) emit PrepareForSleep(before)."""
    await call(bus, dbusmock.MOCK_IFACE, "EmitSignal", "sssav",
               [MANAGER, "PrepareForSleep", "b", [Variant("b", before)]])


async def inhibitors(bus: MessageBus) -> list[tuple]:
    """What the mock holds, as (what, who, why, mode) each."""
    (listed,) = await call(bus, MANAGER, "ListInhibitors")
    return [tuple(i[:4]) for i in listed]


async def wait_for_inhibitors(bus: MessageBus, count: int, timeout: float = 2.0) -> list[tuple]:
    """The mock drops an inhibitor when it sees the HUP, a moment after our close."""
    deadline = time.monotonic() + timeout
    while len(held := await inhibitors(bus)) != count:
        assert time.monotonic() < deadline, f"mock holds {held}, expected {count}"
        await asyncio.sleep(0.01)
    return held


def pipes() -> dict[int, str]:
    """This process's open pipe descriptors: fd → ``pipe:[inode]``."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target.startswith("pipe:"):
            found[int(name)] = target
    return found


def new_pipes(before: dict[int, str]) -> dict[int, str]:
    return {fd: t for fd, t in pipes().items() if before.get(fd) != t}


class Recorder:
    """on_prepare: records each call and wakes whoever waits for the next one."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.queue: asyncio.Queue[bool] = asyncio.Queue()

    def __call__(self, before: bool) -> None:
        self.calls.append(before)
        self.queue.put_nowait(before)

    async def next(self, timeout: float = 2.0) -> bool:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def test_start_takes_a_delay_inhibitor_and_release_gives_it_back(
        mock_logind: MockLogind, control: MessageBus) -> None:
    baseline = pipes()
    watcher = logind.SleepWatcher(mock_logind.bus.address, Recorder())
    try:
        assert await watcher.start() is True
        assert watcher.holding
        assert await inhibitors(control) == [HELD]
        # Exactly one descriptor came with the reply, and it is kept.
        assert len(new_pipes(baseline)) == 1
        # The template has no InhibitDelayMaxUSec: logind's default stands.
        assert watcher.max_delay == 5.0

        watcher.release()
        assert not watcher.holding
        assert new_pipes(baseline) == {}
        await wait_for_inhibitors(control, 0)
        watcher.release()  # idempotent
        assert not watcher.holding
    finally:
        watcher.close()
    assert new_pipes(baseline) == {}


async def test_close_gives_the_inhibitor_back(mock_logind: MockLogind,
                                              control: MessageBus) -> None:
    baseline = pipes()
    watcher = logind.SleepWatcher(mock_logind.bus.address, Recorder())
    assert await watcher.start()
    await wait_for_inhibitors(control, 1)
    watcher.close()
    assert not watcher.holding
    assert new_pipes(baseline) == {}
    await wait_for_inhibitors(control, 0)
    watcher.close()  # idempotent


async def test_prepare_for_sleep_reaches_the_callback(mock_logind: MockLogind,
                                                      control: MessageBus) -> None:
    recorder = Recorder()
    watcher = logind.SleepWatcher(mock_logind.bus.address, recorder)
    try:
        assert await watcher.start()
        await emit_prepare(control, True)
        assert await recorder.next() is True
        assert recorder.calls == [True]
        await emit_prepare(control, False)
        assert await recorder.next() is False
        assert recorder.calls == [True, False]
    finally:
        watcher.close()


async def test_prepare_for_sleep_from_anyone_but_logind_is_ignored(
        mock_logind: MockLogind, control: MessageBus) -> None:
    """A forged signal, broadcast or sent to phyllod's connection, is not logind's."""
    recorder = Recorder()
    watcher = logind.SleepWatcher(mock_logind.bus.address, recorder)
    try:
        assert await watcher.start()
        assert watcher._bus is not None
        # Broadcast: the bus's match rule (sender=logind) keeps it away.
        await control.send(Message.new_signal(PATH, MANAGER, "PrepareForSleep", "b", [True]))
        # Unicast to the watcher's connection: no match rule applies, the sender check does.
        await control.send(Message(message_type=MessageType.SIGNAL,
                                   destination=watcher._bus.unique_name, path=PATH,
                                   interface=MANAGER, member="PrepareForSleep", signature="b",
                                   body=[True]))
        # The bus passes this connection's messages on in order: the forged
        # signals reach the watcher before the mock has even been asked.
        await emit_prepare(control, False)
        assert await recorder.next() is False
        assert recorder.calls == [False]
    finally:
        watcher.close()


async def test_release_then_reacquire_holds_one_new_inhibitor(
        mock_logind: MockLogind, control: MessageBus) -> None:
    baseline = pipes()
    watcher = logind.SleepWatcher(mock_logind.bus.address, Recorder())
    try:
        assert await watcher.start()
        (first,) = new_pipes(baseline).values()
        watcher.release()
        watcher.release()
        await watcher.reacquire()
        assert watcher.holding
        (second,) = new_pipes(baseline).values()
        assert second != first, "reacquire must hand over a new inhibitor"
        assert await wait_for_inhibitors(control, 1) == [HELD]

        await watcher.reacquire()  # already held: nothing stacks up
        assert list(new_pipes(baseline).values()) == [second]

        watcher.release()
        await asyncio.gather(watcher.reacquire(), watcher.reacquire())
        assert len(new_pipes(baseline)) == 1
        await wait_for_inhibitors(control, 1)
    finally:
        watcher.close()
    assert new_pipes(baseline) == {}


async def test_release_voids_a_reacquire_still_waiting_for_logind(
        mock_logind: MockLogind, control: MessageBus) -> None:
    baseline = pipes()
    watcher = logind.SleepWatcher(mock_logind.bus.address, Recorder())
    try:
        assert await watcher.start()
        watcher.release()
        pending = asyncio.create_task(watcher.reacquire())
        await asyncio.sleep(0)  # Inhibit is on its way; its reply is not in yet
        watcher.release()
        await pending
        assert not watcher.holding
        assert new_pipes(baseline) == {}
        await wait_for_inhibitors(control, 0)
    finally:
        watcher.close()


async def test_max_delay_is_inhibit_delay_max_usec(mock_logind: MockLogind,
                                                   control: MessageBus) -> None:
    await call(control, dbusmock.MOCK_IFACE, "AddProperty", "ssv",
               [MANAGER, "InhibitDelayMaxUSec", Variant("t", 3_500_000)])
    watcher = logind.SleepWatcher(mock_logind.bus.address, Recorder())
    try:
        assert await watcher.start()
        assert watcher.max_delay == 3.5
    finally:
        watcher.close()


async def test_without_logind_start_returns_false(logind_bus: private_bus.PrivateSystemBus,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    baseline = pipes()
    watcher = logind.SleepWatcher(logind_bus.address, Recorder())
    with caplog.at_level(logging.INFO, logger="phyllod"):
        assert await watcher.start() is False
    assert not watcher.holding
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "org.freedesktop.login1" in warnings[0].getMessage()
    assert new_pipes(baseline) == {}
    watcher.release()
    await watcher.reacquire()  # harmless on a watcher that never started
    assert not watcher.holding
    watcher.close()


async def test_unreachable_bus_start_returns_false(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    watcher = logind.SleepWatcher(f"unix:path={tmp_path / 'no-bus'}", Recorder())
    with caplog.at_level(logging.INFO, logger="phyllod"):
        assert await watcher.start() is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    watcher.close()
