"""The claim loop: batches back to back while there is work, a wake-up or a poll when idle."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bench.processes import wait_for
from easel.worker.engine.loop import ClaimLoop


class Queue:
    """Stands in for ``JobRunner.run_next``: pops one batch per call, records each wait."""

    def __init__(self, batches: int = 0, fail_first: int = 0) -> None:
        self.batches = batches
        self.fail_first = fail_first
        self.waits: list[float] = []
        self.lock = threading.Lock()

    def run_next(self, wait_seconds: float) -> str | None:
        with self.lock:
            self.waits.append(wait_seconds)
            if self.fail_first:
                self.fail_first -= 1
                raise ConnectionError("database away")
            if not self.batches:
                return None
            self.batches -= 1
            return f"job-{self.batches}"

    def add(self, batches: int) -> None:
        with self.lock:
            self.batches += batches


@pytest.fixture
def queue() -> Queue:
    return Queue()


@pytest.fixture
def loop(queue: Queue) -> Iterator[ClaimLoop]:
    loop = ClaimLoop(queue.run_next, idle_poll=60.0, gather=0.05, error_backoff=0.01)
    loop.start()
    yield loop
    assert loop.stop(timeout=5)


def test_a_busy_worker_claims_the_next_batch_without_a_wakeup(queue: Queue, loop: ClaimLoop) -> None:
    wait_for(lambda: queue.waits, 5, "the first claim")  # idle: it found nothing
    queue.add(3)
    loop.wake()  # one wake-up for three batches
    wait_for(lambda: loop.batches == 3, 5, "three batches")
    wait_for(lambda: len(queue.waits) == 5, 5, "the claim that finds nothing")
    # Woken from idle it gathers a batch; between batches it does not wait at all.
    assert queue.waits == [0.05, 0.05, 0.0, 0.0, 0.0]


def test_an_idle_worker_claims_when_woken_not_at_its_next_poll(queue: Queue, loop: ClaimLoop) -> None:
    wait_for(lambda: queue.waits, 5, "the first claim")
    queue.add(1)
    loop.wake()
    wait_for(lambda: loop.batches == 1, 5, "the woken claim (the poll is a minute away)")


def test_an_idle_worker_polls_the_database_without_wakeups(queue: Queue) -> None:
    loop = ClaimLoop(queue.run_next, idle_poll=0.05)
    loop.start()
    try:
        wait_for(lambda: queue.waits, 5, "the first claim")
        queue.add(1)  # queued, but its wake-up was lost
        wait_for(lambda: loop.batches == 1, 5, "the poll to find the job")
    finally:
        assert loop.stop(timeout=5)


def test_a_failing_claim_is_retried() -> None:
    queue = Queue(batches=1, fail_first=2)
    loop = ClaimLoop(queue.run_next, idle_poll=60.0, error_backoff=0.01)
    loop.start()
    try:
        wait_for(lambda: loop.batches == 1, 5, "the claim after two failures")
    finally:
        assert loop.stop(timeout=5)


def test_stop_ends_an_idle_loop_at_once(queue: Queue) -> None:
    loop = ClaimLoop(queue.run_next, idle_poll=60.0)
    loop.start()
    wait_for(lambda: queue.waits, 5, "the first claim")
    assert loop.stop(timeout=2)


def test_a_started_worker_lets_its_denoising_thread_take_the_gil_back_at_once(env: dict[str, Any]) -> None:
    """The worker shortens the interval after which a thread waiting for the GIL gets it
    (CPython's default: 5 ms), so its store, preview and broker threads do not hold up
    denoising (``worker.process.GIL_SWITCH_INTERVAL``)."""
    from easel.worker.engine.device import DevicePlan
    from easel.worker.process import GIL_SWITCH_INTERVAL, WorkerProcess

    settings = env["settings"].model_copy(update={"preload_models": "none", "metrics_port": 0})
    before = sys.getswitchinterval()
    process = WorkerProcess.build(
        settings, env["registry"], ["tiny-sd"], DevicePlan("cpu", "float32"), lambda *_: None, lambda *_: None
    )
    try:
        assert before > GIL_SWITCH_INTERVAL
        process.start()
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL)
    finally:
        process.stop(timeout=10)
        sys.setswitchinterval(before)
