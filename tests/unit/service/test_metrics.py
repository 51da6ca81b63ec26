"""service/metrics: when the file is written (rate-limited, trailing, never idle)."""

from __future__ import annotations

import asyncio

import pytest

from phyllod.core.metrics import Calls, Snapshot, device_counts
from phyllod.core.model import Subsystem
from phyllod.core.plan import OpKind
from phyllod.service.metrics import Metrics

SETTLE, INTERVAL = 0.02, 0.1


class Rig:
    def __init__(self, writable: bool = True) -> None:
        self.written: list[str] = []
        self.requests = 0
        self.writable = writable
        self.metrics = Metrics(snapshot=self.snapshot, write=self.write, settle=SETTLE,
                               interval=INTERVAL)

    def snapshot(self, calls: dict[tuple[OpKind, Subsystem], Calls]) -> Snapshot:
        return Snapshot(version="0", start_time=0.0, devices=device_counts([]), calls=calls,
                        policy_loaded=True, policy_errors=0, libvirt_connected=True,
                        requests_open=self.requests)

    def write(self, text: str) -> bool:
        self.written.append(text)
        return self.writable

    def pending(self) -> bool:
        return self.metrics._handle is not None


async def test_nothing_changed_nothing_armed() -> None:
    rig = Rig()
    await asyncio.sleep(SETTLE * 3)
    assert rig.written == [] and not rig.pending()


async def test_a_change_is_written_after_the_turn_not_in_it() -> None:
    rig = Rig()
    rig.metrics.changed()
    assert rig.written == [] and rig.pending()  # the turn goes on; the write comes later
    await asyncio.sleep(SETTLE * 3)
    assert len(rig.written) == 1 and not rig.pending()


async def test_many_changes_make_one_write_per_interval_and_the_last_lands() -> None:
    rig = Rig()
    rig.metrics.changed()
    await asyncio.sleep(SETTLE * 2)
    assert len(rig.written) == 1
    for n in range(1, 6):  # a burst just after a write
        rig.requests = n
        rig.metrics.changed()
        await asyncio.sleep(0.005)
    assert len(rig.written) == 1  # held back by the interval
    while len(rig.written) < 2:
        await asyncio.sleep(0.01)
    assert "phyllod_requests_open 5" in rig.written[-1]  # the trailing write: the last state
    await asyncio.sleep(INTERVAL * 1.5)
    assert len(rig.written) == 2 and not rig.pending()


async def test_the_same_text_is_not_written_again() -> None:
    rig = Rig()
    for _ in range(2):
        rig.metrics.changed()
        await asyncio.sleep(INTERVAL * 1.5)
    assert len(rig.written) == 1


async def test_a_failed_write_is_tried_again_at_the_next_change() -> None:
    rig = Rig(writable=False)
    rig.metrics.changed()
    await asyncio.sleep(SETTLE * 3)
    rig.metrics.changed()
    await asyncio.sleep(INTERVAL * 1.5)
    assert len(rig.written) == 2  # same text, but the first never reached the file


@pytest.mark.parametrize("ok", [True, False])
async def test_a_call_end_is_counted_and_written(ok: bool) -> None:
    rig = Rig()
    rig.metrics.call_ended(OpKind.ATTACH, Subsystem.USB, ok, 0.02)
    await asyncio.sleep(SETTLE * 3)
    (text,) = rig.written
    assert 'phyllod_attaches_total{subsystem="usb"} 1' in text
    assert f'phyllod_attach_failures_total{{subsystem="usb"}} {0 if ok else 1}' in text


async def test_after_cancel_nothing_is_written() -> None:
    rig = Rig()
    rig.metrics.changed()
    rig.metrics.cancel()
    rig.metrics.call_ended(OpKind.DETACH, Subsystem.USB, True, 0.05)  # a call ending at stop
    await asyncio.sleep(SETTLE * 3)
    assert rig.written == [] and not rig.pending()


async def test_no_file_no_timer() -> None:
    metrics = Metrics(snapshot=Rig().snapshot, write=None)
    metrics.changed()
    assert metrics._handle is None
