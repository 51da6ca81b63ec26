"""The libvirt worker's hand-off: a call the turn issues is taken before the turn goes on."""

from __future__ import annotations

import threading

import pytest

from phyllod.host import libvirt_client
from phyllod.host.libvirt_client import _Worker


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-off wait no loaded machine runs out of, so the counts below are exact."""
    monkeypatch.setattr(libvirt_client._Worker, "HANDOFF_TIMEOUT", 30.0)


def _idle(worker: _Worker) -> None:
    """Wait until the worker sits on its empty queue (it says so before it waits)."""
    worker.submit(lambda: None).result(10)
    for _ in range(10_000):
        if worker._idle:
            return
        threading.Event().wait(0.001)
    raise AssertionError("the worker never went idle")


def test_an_idle_worker_has_taken_a_handed_call_when_submit_returns(patient: None):
    worker = _Worker()
    _idle(worker)
    release = threading.Event()
    future = worker.submit(release.wait, 10, handoff=True)
    # Taken: off the queue and running, not waiting for the GIL behind the caller.
    assert worker._queue.empty()
    assert future.running()
    assert worker.handoffs == 1
    release.set()
    assert future.result(10) is True
    worker.shutdown()


def test_a_busy_worker_is_not_waited_for(patient: None):
    worker = _Worker()
    _idle(worker)
    release = threading.Event()
    busy = worker.submit(release.wait, 10, handoff=True)
    queued = worker.submit(lambda: "after", handoff=True)
    assert worker.handoffs == 1  # the second call queues behind the first at once
    assert not queued.done()
    release.set()
    assert busy.result(10) is True and queued.result(10) == "after"
    worker.shutdown()


def test_a_call_without_handoff_never_waits(patient: None):
    worker = _Worker()
    _idle(worker)
    assert worker.submit(lambda: 7).result(10) == 7
    assert worker.handoffs == 0
    worker.shutdown()


def test_a_handed_call_that_fails_still_hands_its_error_over(patient: None):
    worker = _Worker()
    _idle(worker)

    def fails() -> None:
        raise RuntimeError("libvirt said no")

    with pytest.raises(RuntimeError, match="libvirt said no"):
        worker.submit(fails, handoff=True).result(10)
    worker.shutdown()
