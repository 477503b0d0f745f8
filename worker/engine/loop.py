"""The claim loop of one worker process (docs/design.md, principle 10).

A busy worker never waits for the broker: as soon as a batch is handed to storing,
the loop claims the next one, for as long as its models have queued jobs. Idle, it
sleeps until a wake-up (a broker message, ``wake()``) or ``idle_poll`` seconds pass,
then looks at the database again, so a lost wake-up costs at most one poll. Waking
from idle, the first claim waits up to ``gather`` seconds for compatible jobs
submitted together to join its batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

RunNext = Callable[[float], str | None]
"""Claims and runs the next batch, waiting that many seconds for it to fill; the head
job's id, or ``None`` when nothing was queued."""


class ClaimLoop:
    """Runs ``run_next`` back to back while there is work; sleeps between wake-ups when not."""

    def __init__(
        self,
        run_next: RunNext,
        idle_poll: float,
        gather: float = 0.0,
        error_backoff: float = 1.0,
        before_first_claim: Callable[[], None] | None = None,
    ) -> None:
        self.run_next = run_next
        self.idle_poll = idle_poll
        self.gather = gather
        self.error_backoff = error_backoff
        self.before_first_claim = before_first_claim
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0

    def wake(self) -> None:
        """New work may be queued: claim now if idle (a no-op while busy)."""
        self._wake.set()

    def start(self) -> None:
        """Run the loop in a thread of its own."""
        self._thread = threading.Thread(target=self.run, name="easel-claims", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Claim nothing more; wait up to ``timeout`` for the batch in hand to end.
        Whether the loop ended."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Claim and run batches until ``stop()``."""
        if self.before_first_claim is not None:
            self.before_first_claim()
        idle = True
        while not self._stop.is_set():
            self._wake.clear()  # a wake-up from now on is news to the claim below
            try:
                ran = self.run_next(self.gather if idle else 0.0)
            except Exception:  # e.g. the database is away: log, wait, try again
                log.exception("claiming the next batch failed; retrying in %.1fs", self.error_backoff)
                self._stop.wait(self.error_backoff)
                continue
            if ran is not None:
                self.batches += 1
                idle = False
                continue
            idle = True
            self._wake.wait(self.idle_poll)
