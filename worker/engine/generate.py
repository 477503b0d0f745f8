"""One pipeline call: a fresh scheduler, one generator per image, a step callback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, ImageFilter

from shared.models import JobType
from shared.registry import SCHEDULERS

log = logging.getLogger(__name__)

# name -> (diffusers class name, config overrides)
_SCHEDULER_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "lcm": ("LCMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
assert set(_SCHEDULER_TABLE) == set(SCHEDULERS), "shared.registry.SCHEDULERS is out of sync"


class JobCanceled(Exception):
    """Raised from the step callback to stop a pipeline at the next step."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    seeds: tuple[int, ...]
    job_type: JobType = JobType.TXT2IMG
    image: Image.Image | None = None  # img2img / inpaint: the input, RGB
    mask: Image.Image | None = None  # inpaint: L, white repaints
    strength: float | None = None
    mask_blur: int = 0
    keep_unmasked: bool = True


StepCallback = Callable[[int, int], None]
"""Called with (steps done, total steps); raises ``JobCanceled`` to stop."""


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler instance of kind ``name`` from the model's scheduler config."""
    import diffusers

    class_name, overrides = _SCHEDULER_TABLE[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


def with_scheduler(pipe: Any, scheduler: Any) -> Any:
    """A pipeline sharing ``pipe``'s modules but using its own ``scheduler``.

    The cached pipeline is never mutated, so later calls see it as it was loaded.
    Built with the pipeline's own constructor rather than ``from_pipe``, which casts
    the shared modules to float32 unless told otherwise and costs ~15x more.
    """
    _, optional = pipe._get_signature_keys(pipe)
    config = {key: pipe.config[key] for key in optional if key in pipe.config}
    return type(pipe)(**{**pipe.components, "scheduler": scheduler}, **config)


class GpuOutOfMemory(RuntimeError):
    """Even one image at a time does not fit in the GPU's memory."""


def generate(pipe: Any, request: GenerationRequest, on_step: StepCallback | None = None) -> list[Any]:
    """Run the job for every seed in ``request``; returns PIL images in seed order.

    ``pipe`` is the pipeline for ``request.job_type`` (txt2img, img2img or inpaint).
    On CUDA out-of-memory the cache is freed and the batch is retried as two halves
    (recursively); one image that still does not fit raises ``GpuOutOfMemory``.
    """
    import torch

    try:
        return _generate(pipe, request, on_step)
    except torch.cuda.OutOfMemoryError as exc:
        free_accelerator_memory()
        if len(request.seeds) == 1:
            raise GpuOutOfMemory(
                f"out of GPU memory for one {request.width}x{request.height} image; "
                f"use a smaller size or a worker with more memory"
            ) from exc
        half = len(request.seeds) // 2
        log.warning(
            "out of GPU memory for %d images; retrying as %d + %d",
            len(request.seeds),
            half,
            len(request.seeds) - half,
        )
        first = generate(pipe, replace(request, seeds=request.seeds[:half]), on_step)
        return first + generate(pipe, replace(request, seeds=request.seeds[half:]), on_step)


def free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _generate(pipe: Any, request: GenerationRequest, on_step: StepCallback | None) -> list[Any]:
    import torch

    # 1. A fresh scheduler and a pipeline view that uses it.
    call_pipe = with_scheduler(pipe, make_scheduler(request.scheduler, pipe.scheduler.config))
    call_pipe.set_progress_bar_config(disable=True)
    # 2. One generator per image (on the CPU, so seeds give the same noise on any device).
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]
    count = len(request.seeds)

    # 3. Progress and cancel at every denoising step.
    def callback(pipeline: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(step + 1, int(getattr(pipeline, "num_timesteps", request.steps)))
        return kwargs

    # 4. The inputs of each job type, at the output size.
    size = (request.width, request.height)
    kwargs: dict[str, Any] = {}
    if request.job_type is JobType.TXT2IMG:
        kwargs.update(width=request.width, height=request.height)
    else:
        if request.image is None:
            raise ValueError(f"{request.job_type.value} needs an input image")
        image = fit(request.image, size, Image.Resampling.LANCZOS)
        kwargs.update(image=[image] * count, strength=request.strength)
        if request.job_type is JobType.INPAINT:
            if request.mask is None:
                raise ValueError("inpaint needs a mask")
            mask = fit(request.mask, size, Image.Resampling.BILINEAR)
            kwargs.update(mask_image=[mask] * count, width=request.width, height=request.height)

    # 5. Denoise and decode.
    with torch.inference_mode():
        result = call_pipe(
            prompt=[request.prompt] * count,
            negative_prompt=[request.negative_prompt] * count if request.negative_prompt else None,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            generator=generators,
            callback_on_step_end=callback,
            output_type="pil",
            **kwargs,
        )
    images = list(result.images)

    # 6. Inpaint: what the mask keeps is the input's, exactly (a feathered seam between).
    if request.job_type is JobType.INPAINT and request.keep_unmasked:
        images = [keep_unmasked(out, image, mask, request.mask_blur) for out in images]
    return images


def fit(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)


def keep_unmasked(output: Image.Image, source: Image.Image, mask: Image.Image, blur: int) -> Image.Image:
    """``output`` where the mask is white, ``source`` where it is black, blended between."""
    alpha = mask.convert("L")
    if blur:
        alpha = alpha.filter(ImageFilter.GaussianBlur(blur))
    return Image.composite(output.convert("RGB"), source.convert("RGB"), alpha)
