"""``easel run``'s process supervisor: starts web, worker and webhook sender, restarts
whichever dies (and says so), and stops them all on Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field

log = logging.getLogger("easel.run")


@dataclass
class Child:
    """One supervised command and its current process."""

    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.args)
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)


@dataclass
class Supervisor:
    """Keeps ``children`` running: a child that exits is started again after a delay that
    doubles while it keeps dying young (``min_backoff`` up to ``max_backoff``)."""

    children: list[Child]
    min_backoff: float = 0.5
    max_backoff: float = 30.0
    stable_after: float = 60.0
    poll: float = 0.2
    stopping: bool = field(default=False, init=False)

    def run(self) -> None:
        """Start every child and supervise until ``stop()`` (or a signal)."""
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        for child in self.children:
            child.start()
        due: dict[str, float] = {}
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                assert child.process is not None
                code = child.process.poll()
                if code is None:
                    continue
                if child.name not in due:
                    if now - child.started_at >= self.stable_after:
                        child.restarts = 0  # it had run well; a new death starts the backoff over
                    delay = min(self.max_backoff, self.min_backoff * 2**child.restarts)
                    log.warning(
                        "%s (pid %d) exited with code %s; restarting it in %.1fs",
                        child.name,
                        child.process.pid,
                        code,
                        delay,
                    )
                    due[child.name] = now + delay
                elif now >= due[child.name]:
                    del due[child.name]
                    child.restarts += 1
                    child.start()
            time.sleep(self.poll)
        self.shutdown()

    def stop(self, *_: object) -> None:
        self.stopping = True

    def shutdown(self, timeout: float = 30.0) -> None:
        """SIGTERM every running child, then SIGKILL what is left after ``timeout``."""
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
