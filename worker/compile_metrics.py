"""A worker's compile series on its ``/metrics`` (the registry of ``worker.metrics``).

* ``easel_worker_compile_path{model,path}``: 1 for the path the model's jobs run now
  (``eager``, ``compiling``: eager while the UNet compiles, ``compiled``, ``failed``:
  eager after a failed compile), 0 for the others.
* ``easel_worker_compile_warm_up_seconds{model}``: how long the model's compile warm-up took.
* ``easel_worker_compile_cache{model,result}``: the compile cache's answers (hit, miss,
  corrupt, mismatch) at the model's loads.
"""

from __future__ import annotations

import logging
from typing import Any, get_args

from prometheus_client import Counter, Gauge

from easel.worker.engine.compile_switch import CompilePath, CompileState
from easel.worker.metrics import REGISTRY

log = logging.getLogger(__name__)

COMPILE_PATH = Gauge(
    "easel_worker_compile_path",
    "1 for the path a model's jobs run now: eager, compiling (eager meanwhile), compiled or failed.",
    ["model", "path"],
    registry=REGISTRY,
)
WARM_UP_SECONDS = Gauge(
    "easel_worker_compile_warm_up_seconds",
    "Seconds the model's compile warm-up took (from the cache or from scratch).",
    ["model"],
    registry=REGISTRY,
)
CACHE_RESULTS = Counter(
    "easel_worker_compile_cache",
    "Compile cache answers at model loads: hit, miss, corrupt or mismatch.",
    ["model", "result"],
    registry=REGISTRY,
)


STATES: dict[str, dict[str, Any]] = {}
"""Each model's compile path and warm-up, as the heartbeat publishes them (``/readyz``)."""


def compile_states() -> dict[str, dict[str, Any]]:
    """A copy of ``STATES`` for the heartbeat."""
    return {model: dict(state) for model, state in STATES.items()}


def observe_compile(state: CompileState) -> None:
    """Record a change of ``state.model``'s compile path; never raises."""
    try:
        STATES[state.model] = {"path": state.path, "warm_up_seconds": state.warm_up_seconds}
        for path in get_args(CompilePath):
            COMPILE_PATH.labels(model=state.model, path=path).set(1.0 if path == state.path else 0.0)
        if state.path == "compiling" and state.cache is not None:
            CACHE_RESULTS.labels(model=state.model, result=state.cache).inc()
        if state.warm_up_seconds is not None:
            WARM_UP_SECONDS.labels(model=state.model).set(state.warm_up_seconds)
    except Exception:  # metrics must never fail a compile
        log.warning("could not record a compile state", exc_info=True)
