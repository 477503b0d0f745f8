"""Loading pipelines from any source, and keeping them warm (DESIGN principle 4)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ModelLoadError
from shared.models import JobType
from shared.registry import ModelSource, ModelSpec
from worker.engine.device import DevicePlan, torch_dtype
from worker.engine.generate import free_accelerator_memory
from worker.engine.tiny_model import ensure_tiny_model

log = logging.getLogger(__name__)


def load_pipeline(spec: ModelSpec, plan: DevicePlan, offline: bool = True) -> Any:
    """Load ``spec``'s pipeline onto ``plan.device``.

    Every source ends in a diffusers pipeline: a Hub id or a local folder through
    ``AutoPipelineForText2Image.from_pretrained`` (``AutoPipelineForInpainting`` for a
    dedicated inpainting checkpoint), a checkpoint file through ``from_single_file``.
    ``tiny-sd`` is built on first use, then loaded from its folder like any other
    local model.
    """
    from diffusers import (
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    dtype = torch_dtype(plan)
    auto = AutoPipelineForInpainting if spec.inpainting else AutoPipelineForText2Image
    single = StableDiffusionInpaintPipeline if spec.inpainting else StableDiffusionPipeline
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
                pipe = single.from_single_file(
                    spec.location, config=spec.config, dtype=dtype, local_files_only=offline
                )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load model {spec.name!r} ({spec.source.value} {spec.location!r}): {exc}"
        ) from exc
    pipe = pipe.to(plan.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ModelPipelines:
    """One model's weights and the pipelines that share them, one per job type.

    img2img and inpaint pipelines are made from the loaded one with ``from_pipe``
    (same module objects, no second copy of the weights), once per model.
    """

    def __init__(self, spec: ModelSpec, base: Any) -> None:
        self.spec = spec
        self.base = base
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
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if job_type is JobType.IMG2IMG else AutoPipelineForInpainting
            # dtype: from_pipe casts the shared modules to float32 unless told otherwise.
            pipe = auto.from_pipe(self.base, dtype=self.base.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._by_type[job_type] = pipe
        return self._by_type[job_type]


Loader = Callable[[ModelSpec], Any]


@dataclass
class PipelineCache:
    """Loaded pipelines by model name, least recently used evicted past ``max_models``."""

    loader: Loader
    max_models: int = 1
    _pipelines: OrderedDict[str, ModelPipelines] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    loads: dict[str, int] = field(default_factory=dict)

    def get(self, spec: ModelSpec) -> tuple[ModelPipelines, float]:
        """The warm pipelines of ``spec`` and the seconds spent loading them (0.0 if warm)."""
        with self._lock:
            if spec.name in self._pipelines:
                self._pipelines.move_to_end(spec.name)
                return self._pipelines[spec.name], 0.0
            while len(self._pipelines) >= self.max_models:
                evicted, _ = self._pipelines.popitem(last=False)
                log.info("evicted model %s from the pipeline cache", evicted)
                free_accelerator_memory()
            started = time.perf_counter()
            pipe = ModelPipelines(spec, self.loader(spec))
            seconds = time.perf_counter() - started
            self._pipelines[spec.name] = pipe
            self.loads[spec.name] = self.loads.get(spec.name, 0) + 1
            log.info(
                "loaded model %s in %.2fs",
                spec.name,
                seconds,
                extra={"model": spec.name, "load_seconds": round(seconds, 3)},
            )
            return pipe, seconds

    def loaded(self) -> list[str]:
        return list(self._pipelines)
