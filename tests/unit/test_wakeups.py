"""Wake-ups from the web: one per model per window, each job's published after its commit."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from easel.shared.queue import WakeupCoalescer
from easel.shared.settings import Settings
from easel.web import create_app
from tests.factories import ManualTimers


def test_a_burst_shares_wakeups_and_each_job_has_one_after_its_commit() -> None:
    sent: list[tuple[str, str]] = []
    timers = ManualTimers()
    wakeups = WakeupCoalescer(
        lambda job_id, model: sent.append((job_id, model)), 0.05, lambda: timers.now, timers.schedule
    )
    wakeups.wake("a", "m1")  # after a quiet spell: at once
    assert sent == [("a", "m1")] and timers.due == []
    timers.now = 0.01
    wakeups.wake("b", "m1")  # inside the window: at its end
    timers.now = 0.02
    wakeups.wake("c", "m1")  # the one due covers it
    wakeups.wake("x", "m2")  # another model has its own window
    assert sent == [("a", "m1"), ("x", "m2")] and [at for at, _ in timers.due] == [0.05]
    timers.fire()
    assert sent[-1] == ("c", "m1")  # published at 0.05, after b and c committed
    timers.now = 0.07
    wakeups.wake("d", "m1")  # inside the window of that one: due at 0.10
    assert [at for at, _ in timers.due] == [0.1] and len(sent) == 3
    timers.fire()
    timers.now = 0.3
    wakeups.wake("e", "m1")  # quiet again: at once
    assert sent[-2:] == [("d", "m1"), ("e", "m1")] and timers.due == []


def test_the_wakeup_due_at_the_windows_end_is_published_by_a_timer() -> None:
    sent: list[str] = []
    both = threading.Event()

    def send(job_id: str, model: str) -> None:
        sent.append(job_id)
        if len(sent) == 2:
            both.set()

    wakeups = WakeupCoalescer(send, window=0.05)
    wakeups.wake("a", "m")
    wakeups.wake("b", "m")
    assert both.wait(10), sent
    assert sent == ["a", "b"]


def test_a_zero_window_publishes_every_wakeup() -> None:
    sent: list[str] = []
    wakeups = WakeupCoalescer(lambda job_id, model: sent.append(job_id), window=0.0)
    for job_id in "abc":
        wakeups.wake(job_id, "m")
    assert sent == ["a", "b", "c"]


def test_a_wakeup_that_cannot_be_scheduled_is_published_at_once() -> None:
    sent: list[str] = []
    now = [0.0]

    def no_timer(delay: float, call: Callable[[], None]) -> None:
        raise RuntimeError("can't start new thread")

    wakeups = WakeupCoalescer(lambda job_id, model: sent.append(job_id), 0.05, lambda: now[0], no_timer)
    wakeups.wake("a", "m")
    now[0] = 0.01
    wakeups.wake("b", "m")  # due at the window's end, but no timer: now
    now[0] = 0.2
    wakeups.wake("c", "m")  # nothing left due that would swallow it
    assert sent == ["a", "b", "c"]


def test_the_embedded_broker_has_nothing_to_coalesce(tmp_path: Path) -> None:
    """It carries no wake-ups (``broker_wakes_workers``), so no timer is ever started."""
    app = create_app(Settings(home=tmp_path, auth_enabled=False))
    assert app.extensions["easel"].wakeups.window == 0.0
