"""Compiling a model's UNet without holding its jobs: eager until compiled, then compiled.

``Compiler.attach`` runs on each freshly loaded pipeline. It loads the model's entry of
the persistent cache (``compile_cache``); on a hit the warm-up compiles at once from the
cache (seconds) before the first job. On a miss the model serves jobs eagerly at once
while a thread compiles and warms the UNet up at the worker's shapes and batch sizes
(``fastpath.warm_up``), then switches every call to the compiled code and saves the
cache entry. ``UnetSwitch`` makes the choice per call: the compile's own thread calls the
compiled code, job threads call the eager module until it is ready. Each change of path
is reported (``CompileState``) for ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from easel.shared.registry import ModelSpec
from easel.worker.engine.compile_cache import CompileCache, Outcome, device_kind, make_key, model_identity
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.fastpath import Shape, compiled_call, warm_up, warm_up_shapes

if TYPE_CHECKING:
    from easel.shared.settings import Settings

log = logging.getLogger(__name__)

CompilePath = Literal["eager", "compiling", "compiled", "failed"]


class UnetSwitch:
    """Installed as the UNet's ``_compiled_call_impl`` (what ``Module.__call__`` calls):
    the compiled call once ``ready`` or in the compiling thread, else the eager module."""

    def __init__(self, unet: Any, compiled: Callable[..., Any]) -> None:
        self.unet = unet
        self.compiled = compiled
        self.ready = False
        self.warming: int | None = None  # the thread id of the compile
        unet._compiled_call_impl = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.ready or threading.get_ident() == self.warming:
            return self.compiled(*args, **kwargs)
        return self.unet._call_impl(*args, **kwargs)


@dataclass(frozen=True)
class CompileState:
    """Where one model's compile stands: its path, the cache's answer and the warm-up time."""

    model: str
    path: CompilePath
    cache: Outcome | None = None
    warm_up_seconds: float | None = None


@dataclass
class Compiler:
    """Compiles the UNet of each pipeline it is given (``attach``), from the cache or in the background."""

    plan: DevicePlan
    cache: CompileCache | None
    shapes: list[Shape]  # EASEL_COMPILE_SHAPES; empty: each model's default size
    batch_sizes: list[int]
    settings: dict[str, str]  # the Easel settings that change the graph, for the key
    background: bool = True
    backend: Any = "inductor"
    vae_tiling_pixels: int = 0
    warm_up_steps: int = 2
    on_state: Callable[[CompileState], None] | None = None
    states: dict[str, CompileState] = field(default_factory=dict)
    _threads: dict[str, threading.Thread] = field(default_factory=dict)

    def attach(self, spec: ModelSpec, pipe: Any) -> Any:
        """Start compiling ``pipe``'s UNet (returns ``pipe``, eager or already compiled)."""
        import torch

        unet = getattr(pipe, "unet", None)
        if not isinstance(unet, torch.nn.Module):
            log.info("model %s has no UNet to compile; it runs eagerly", spec.name)
            self._report(CompileState(spec.name, "eager"))
            return pipe
        shapes = warm_up_shapes(self.plan, self.shapes, spec.default_size, compiling=True)
        key = make_key(
            device=device_kind(self.plan.device),
            model=model_identity(spec.name, spec.location, unet),
            dtype=self.plan.dtype,
            shapes=shapes,
            batch_sizes=self.batch_sizes,
            settings=self.settings,
        )
        outcome: Outcome = self.cache.load(key) if self.cache is not None else "miss"
        switch = UnetSwitch(unet, compiled_call(unet, self.backend))
        state = CompileState(spec.name, "compiling", outcome)
        self._report(state)

        def work() -> None:
            self._warm_up(state, pipe, switch, shapes, key)

        if outcome == "hit" or not self.background:
            work()
        else:
            log.info("model %s serves jobs eagerly while it compiles in the background", spec.name)
            thread = threading.Thread(target=work, name=f"compile-{spec.name}", daemon=True)
            self._threads[spec.name] = thread
            thread.start()
        return pipe

    def wait(self, model: str, timeout: float | None = None) -> CompileState | None:
        """Wait for ``model``'s background compile (if any); its state then."""
        thread = self._threads.get(model)
        if thread is not None:
            thread.join(timeout)
        return self.states.get(model)

    def _warm_up(
        self, state: CompileState, pipe: Any, switch: UnetSwitch, shapes: list[Shape], key: Any
    ) -> None:
        started = time.perf_counter()
        switch.warming = threading.get_ident()
        try:
            warm_up(
                pipe,
                shapes,
                self.batch_sizes,
                steps=self.warm_up_steps,
                vae_tiling_pixels=self.vae_tiling_pixels,
            )
        except Exception:
            log.exception("could not compile model %s; it keeps serving jobs eagerly", state.model)
            self._report(replace(state, path="failed", warm_up_seconds=time.perf_counter() - started))
            return
        finally:
            switch.warming = None
        switch.ready = True
        seconds = time.perf_counter() - started
        log.info(
            "model %s compiled (cache %s) in %.1fs; jobs now run the compiled UNet",
            state.model,
            state.cache,
            seconds,
            extra={"model": state.model, "compile_cache": state.cache, "warm_up_seconds": round(seconds, 3)},
        )
        self._report(replace(state, path="compiled", warm_up_seconds=seconds))
        if state.cache != "hit" and self.cache is not None:
            try:
                self.cache.save(key)
            except Exception:  # the compile stands; only the next start pays it again
                log.exception("could not save the compile cache of model %s", state.model)

    def _report(self, state: CompileState) -> None:
        self.states[state.model] = state
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("could not report the compile state of model %s", state.model)


def compiler_from_settings(
    settings: Settings, plan: DevicePlan, storage: object | None = None
) -> Compiler | None:
    """The worker's ``Compiler``, or ``None`` when ``EASEL_TORCH_COMPILE`` leaves it eager.
    ``storage``: the job storage; an S3 one shares the cache entries (``EASEL_COMPILE_CACHE_SHARED``)."""
    from easel.shared.settings import parse_shapes
    from easel.shared.storage import S3Storage
    from easel.worker.engine.compile_cache import use_inductor_dir
    from easel.worker.engine.fastpath import compile_enabled

    if not compile_enabled(settings.torch_compile, plan):
        log.info("torch.compile off (EASEL_TORCH_COMPILE=%s on %s)", settings.torch_compile, plan.device)
        return None
    root = settings.compile_cache_dir
    cache = None
    if root is not None:
        use_inductor_dir(root)
        shared = storage if settings.compile_cache_shared and isinstance(storage, S3Storage) else None
        cache = CompileCache(root, shared)
    return Compiler(
        plan=plan,
        cache=cache,
        shapes=parse_shapes(settings.compile_shapes),
        batch_sizes=list(range(1, settings.max_batch_size + 1)),
        settings={"channels_last": str(settings.channels_last and plan.is_cuda), "backend": "inductor"},
        background=settings.compile_background,
        vae_tiling_pixels=settings.vae_tiling_pixels,
    )
