"""Loading pipelines from any source, and keeping them warm (docs/design.md, principle 4)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easel.shared.errors import ModelLoadError, cannot_load
from easel.shared.families import family_of_pipeline
from easel.shared.kinds import kind_of
from easel.shared.models import JobType
from easel.shared.registry import ModelSource, ModelSpec
from easel.worker.engine.device import DevicePlan, torch_dtype
from easel.worker.engine.fastpath import apply_fast_path, plan_fast_path
from easel.worker.engine.generate import free_accelerator_memory
from easel.worker.engine.single_file import load_single_file
from easel.worker.engine.tiny_model import ensure_tiny_model

log = logging.getLogger(__name__)


def load_pipeline(
    spec: ModelSpec,
    plan: DevicePlan,
    offline: bool = True,
    *,
    channels_last: bool = True,
    torch_compile: bool = False,
) -> Any:
    """Load ``spec``'s pipeline onto ``plan.device``, then apply the fast path.

    Every source ends in a diffusers pipeline: a Hub id or a local folder through
    ``AutoPipelineForText2Image.from_pretrained`` (``AutoPipelineForInpainting`` for a
    dedicated inpainting checkpoint), a checkpoint file through the family's
    ``from_single_file`` pipeline. ``tiny-sd`` is built on first use, then loaded from its
    folder like any other local model. The loaded pipeline must belong to ``spec``'s
    family (``check_family``). ``channels_last`` takes effect on CUDA only
    (``worker.engine.fastpath``); ``torch_compile`` compiles in place on any device (a worker
    compiles through ``compile_switch.Compiler`` instead: cache, background switch).
    """
    from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # offline: the switches are set at import (easel/offline.py)
    dtype = torch_dtype(plan)
    auto = AutoPipelineForInpainting if spec.inpainting else AutoPipelineForText2Image
    try:
        match spec.source:
            case ModelSource.TINY:
                folder = ensure_tiny_model(Path(spec.location), inpainting=spec.inpainting)
                pipe = auto.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
            case ModelSource.DIRECTORY:
                pipe = auto.from_pretrained(spec.location, dtype=dtype, local_files_only=True)
            case ModelSource.HUGGINGFACE:
                pipe = auto.from_pretrained(spec.location, dtype=dtype, local_files_only=offline)
            case ModelSource.SINGLE_FILE:
                # the architecture from the file's header; spec.config or the shipped configs
                pipe = load_single_file(spec, dtype, offline)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load model {spec.name!r} ({spec.source.value} {spec.location!r}): {exc}",
            cannot_load("model", spec.name, MODEL_ADVICE),
        ) from exc
    check_family(spec, pipe)
    pipe = pipe.to(plan.device)
    pipe.set_progress_bar_config(disable=True)
    apply_fast_path(pipe, plan_fast_path(plan, channels_last=channels_last, torch_compile=torch_compile))
    return pipe


MODEL_ADVICE = "choose another model (GET /api/v1/models) or try again later"


def check_family(spec: ModelSpec, pipe: Any) -> None:
    """``ModelLoadError`` unless the loaded ``pipe`` is one of ``spec``'s family's pipelines
    (the web tier validated its jobs against that family)."""
    family = spec.family_info
    loaded = type(pipe).__name__
    if loaded not in family.pipelines:
        found = family_of_pipeline(loaded)
        actual = f"the {found.describe()} family" if found else "no family Easel serves"
        raise ModelLoadError(
            f"model {spec.name!r} is declared {family.describe()} but loads as {loaded}, which is "
            f"{actual}; fix family in the models file (or remove it to read model_index.json)",
            cannot_load("model", spec.name, MODEL_ADVICE),
        )


def weight_bytes(pipe: Any) -> int:
    """Parameter and buffer bytes of the torch modules of ``pipe`` (0 for anything else)."""
    import torch

    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        return 0
    seen: set[int] = set()
    total = 0
    for module in components.values():
        if not isinstance(module, torch.nn.Module):
            continue
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def auto_pipeline(job_type: JobType | str) -> Any:
    """The diffusers auto-pipeline class of ``job_type``'s kind (``shared.kinds``)."""
    import diffusers

    kind = kind_of(job_type)
    if kind.pipeline is None:
        raise ValueError(f"{kind.value} jobs run no diffusers pipeline")
    return getattr(diffusers, kind.pipeline)


class ModelPipelines:
    """One model's weights and the pipelines that share them, one per job type.

    img2img and inpaint pipelines are made from the loaded one with ``from_pipe``
    (same module objects, no second copy of the weights), once per model.
    """

    def __init__(self, spec: ModelSpec, base: Any) -> None:
        self.spec = spec
        self.base = base
        self.bytes = weight_bytes(base)
        self._by_type: dict[JobType, Any] = {}
        if spec.inpainting:
            self._by_type[JobType.INPAINT] = base
        else:
            self._by_type[JobType.TXT2IMG] = base

    def for_type(self, job_type: JobType | str) -> Any:
        job_type = JobType(job_type)
        if job_type not in self._by_type:
            if job_type not in self.spec.types:
                raise ValueError(f"model {self.spec.name!r} does not serve {job_type.value} jobs")
            auto = auto_pipeline(job_type)
            # dtype: from_pipe casts the shared modules to float32 unless told otherwise.
            pipe = auto.from_pipe(self.base, dtype=self.base.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._by_type[job_type] = pipe
        return self._by_type[job_type]

    def release(self) -> None:
        """Drop every pipeline of this model, so its weights can be freed."""
        self._by_type.clear()
        self.base = None


Loader = Callable[[ModelSpec], Any]


@dataclass
class PipelineCache:
    """Loaded pipelines by model name, least recently used evicted past a budget.

    ``max_models`` caps how many models stay loaded; ``max_bytes`` (0 = no limit) caps
    their weight bytes. Before a load, LRU models are evicted until there is room for
    one more, and, if this model's size is known from an earlier load, until it fits
    the byte budget (so two models never sit in GPU memory at once when one fits).
    After a load, LRU others are evicted while the total is over ``max_bytes``; the
    model just loaded always stays, even alone over the budget.
    """

    loader: Loader
    max_models: int = 1
    max_bytes: int = 0
    _pipelines: OrderedDict[str, ModelPipelines] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sizes: dict[str, int] = field(default_factory=dict)
    loads: dict[str, int] = field(default_factory=dict)
    on_load: Callable[[str, float, int], None] | None = None
    """Called after each load with (model, seconds, models now loaded): metrics."""

    def __post_init__(self) -> None:
        if self.max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {self.max_models}")
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 (no limit) or positive, got {self.max_bytes}")

    def get(self, spec: ModelSpec) -> tuple[ModelPipelines, float]:
        """The warm pipelines of ``spec`` and the seconds spent loading them (0.0 if warm)."""
        with self._lock:
            if spec.name in self._pipelines:
                self._pipelines.move_to_end(spec.name)
                return self._pipelines[spec.name], 0.0
            evicted = False
            while len(self._pipelines) >= self.max_models:
                evicted = self._evict_lru()
            known = self._sizes.get(spec.name)
            while self._pipelines and known is not None and self._over_budget(known):
                evicted = self._evict_lru()
            if evicted:
                free_accelerator_memory()
            started = time.perf_counter()
            pipe = ModelPipelines(spec, self.loader(spec))
            seconds = time.perf_counter() - started
            self._pipelines[spec.name] = pipe
            self._sizes[spec.name] = pipe.bytes
            self.loads[spec.name] = self.loads.get(spec.name, 0) + 1
            log.info(
                "loaded model %s in %.2fs (%d weight bytes)",
                spec.name,
                seconds,
                pipe.bytes,
                extra={"model": spec.name, "load_seconds": round(seconds, 3), "weight_bytes": pipe.bytes},
            )
            evicted = False
            while self._over_budget(0) and len(self._pipelines) > 1:
                evicted = self._evict_lru()
            if evicted:
                free_accelerator_memory()
            if self._over_budget(0):
                log.warning(
                    "model %s alone (%d bytes) is over max_bytes %d; keeping it loaded",
                    spec.name,
                    pipe.bytes,
                    self.max_bytes,
                )
            if self.on_load is not None:
                self.on_load(spec.name, seconds, len(self._pipelines))
            return pipe, seconds

    def loaded(self) -> list[str]:
        """Loaded model names, least recently used first."""
        return list(self._pipelines)

    def bytes_loaded(self) -> int:
        """Weight bytes of the loaded models."""
        return sum(p.bytes for p in self._pipelines.values())

    def _over_budget(self, extra: int) -> bool:
        return self.max_bytes > 0 and self.bytes_loaded() + extra > self.max_bytes

    def _evict_lru(self) -> bool:
        """Drop the least recently used model; the caller then frees accelerator memory."""
        name, pipes = self._pipelines.popitem(last=False)
        pipes.release()
        log.info("evicted model %s from the pipeline cache (%d weight bytes)", name, pipes.bytes)
        return True
