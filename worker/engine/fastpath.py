"""The GPU fast path: what to turn on for a device, and turning it on.

``plan_fast_path`` is a pure function of the device plan and the settings, so the
choices are unit-tested on a CPU-only machine. On CUDA: SDPA attention (diffusers'
default on torch 2, made explicit where a module fell back to the plain processor),
``channels_last`` UNet/VAE, and ``torch.compile`` of the UNet (``EASEL_TORCH_COMPILE``:
on by default, ``compile_enabled``), warmed up per served shape by ``warm_up``. On the
CPU: SDPA, and ``torch.compile`` (inductor's CPU backend) only when asked for;
``channels_last`` is skipped with a logged reason. VAE tiling is chosen per call by output size
(``use_vae_tiling``) and always set, on or off (``set_vae_tiling``), so one request
never leaks into the next. Nothing here claims a speed-up; it is measured on a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from easel.worker.engine.device import DevicePlan

log = logging.getLogger(__name__)

Shape = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class FastPathPlan:
    """What ``apply_fast_path`` does to a freshly loaded pipeline."""

    sdpa: bool = True
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    reasons: tuple[str, ...] = ()  # why something asked for is off


def plan_fast_path(
    device: DevicePlan,
    *,
    channels_last: bool = True,
    torch_compile: bool = False,
    sdpa_available: bool = True,
    compile_backend: str = "inductor",
) -> FastPathPlan:
    """The fast path for ``device`` given the settings; each refusal is logged with its reason."""
    reasons: list[str] = []
    if channels_last and not device.is_cuda:
        reasons.append(f"channels_last skipped: CUDA only (device {device.device})")
    if not sdpa_available:
        reasons.append("SDPA attention unavailable in this torch; keeping the default processors")
    for reason in reasons:
        log.info("fast path: %s", reason)
    return FastPathPlan(
        sdpa=sdpa_available,
        channels_last=channels_last and device.is_cuda,
        compile=torch_compile,
        compile_backend=compile_backend,
        reasons=tuple(reasons),
    )


def compile_enabled(setting: str, device: DevicePlan) -> bool:
    """Whether a worker compiles its UNets (``EASEL_TORCH_COMPILE``: ``auto``, ``true`` or
    ``false``). ``auto``: on CUDA, where the persistent cache (``compile_cache``) and the
    background compile (``compile_switch``) leave no cold start; eager on the CPU, where
    inductor's code is no faster for small models and the compile costs minutes."""
    if setting in ("true", "false"):
        return setting == "true"
    return device.is_cuda


def use_vae_tiling(width: int, height: int, tiling_pixels: int) -> bool:
    """Whether an output of ``width`` x ``height`` decodes in tiles (``tiling_pixels`` 0 = never)."""
    return tiling_pixels > 0 and width * height >= tiling_pixels


def set_vae_tiling(pipe: Any, enabled: bool) -> None:
    """Turn the VAE's tiled encode/decode on or off; call before every pipeline call.

    The VAE is shared by every pipeline of a model, so the flag is always set, never
    left as the previous call had it.
    """
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    if enabled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def apply_fast_path(pipe: Any, plan: FastPathPlan) -> list[str]:
    """Apply ``plan`` to a loaded pipeline in place; returns what was done, for the log."""
    import torch

    done: list[str] = []
    unet = getattr(pipe, "unet", None)
    vae = getattr(pipe, "vae", None)
    modules = [m for m in (unet, vae) if isinstance(m, torch.nn.Module)]
    if plan.sdpa:
        switched = sum(_use_sdpa(module) for module in modules)
        done.append(f"sdpa ({switched} processors switched)" if switched else "sdpa (already default)")
    if plan.channels_last:
        for module in modules:
            module.to(memory_format=torch.channels_last)
        done.append("channels_last")
    if plan.compile and isinstance(unet, torch.nn.Module):
        compile_unet(unet, plan.compile_backend)
        done.append(f"torch.compile unet ({plan.compile_backend})")
    log.info("fast path applied: %s", ", ".join(done) or "nothing")
    return done


def _use_sdpa(module: Any) -> int:
    """Switch plain ``AttnProcessor`` attention to ``AttnProcessor2_0`` (SDPA); returns the count.

    Only where the math is the same: ``scale_qk`` attention (SDPA scales by 1/sqrt(d)).
    Custom processors (LoRA, IP-Adapter, ...) are left alone.
    """
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    if not hasattr(F, "scaled_dot_product_attention"):
        return 0
    switched = 0
    for sub in module.modules():
        if isinstance(sub, Attention) and type(sub.processor) is AttnProcessor and sub.scale_qk:
            sub.set_processor(AttnProcessor2_0())
            switched += 1
    return switched


def compile_unet(unet: Any, backend: str | Callable[..., Any] = "inductor") -> None:
    """``torch.compile`` the UNet in place (the pipeline keeps its module object), for as
    few graphs as the jobs need: two per image size.

    Dynamo compiles again whenever a guard of the last graph fails. Two inputs would
    fail them between jobs, so each call goes through a wrapper before the compiled
    code: the timestep is cast to float32 (samplers such as DDIM and DPM++ step in
    integers, Euler in floats; the UNet's time embedding casts it to float anyway, so
    the numbers are the same) and the batch dimension of every batched input is marked
    dynamic, so the first graph already serves every batch from 2 up. A UNet batch of 1
    (one image without guidance) gets the second graph: dynamo specialises size-1
    dimensions. On the CPU with inductor, the tiny model and empty caches, the warm-up
    compiled 5 graphs in 166 s with plain ``Module.compile`` (static batch, dynamic
    batch, batch of 1, then again for integer timesteps) and 2 in 81 s with this.
    """
    # What ``Module.compile`` sets: ``Module.__call__`` calls it instead of ``_call_impl``.
    unet._compiled_call_impl = compiled_call(unet, backend)


def compiled_call(unet: Any, backend: str | Callable[..., Any] = "inductor") -> Callable[..., Any]:
    """The UNet's compiled call as ``compile_unet`` installs it (see there), not installed."""
    import torch

    compiled = torch.compile(unet._call_impl, backend=backend)

    def call(sample: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(timestep, torch.Tensor) and not timestep.is_floating_point():
            timestep = timestep.to(torch.float32)
        for tensor in _batched_tensors(sample.shape[0], (sample, timestep, args, kwargs)):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        return compiled(sample, timestep, *args, **kwargs)

    return call


def _batched_tensors(batch: int, value: Any) -> list[Any]:
    """The tensors in ``value`` (nested in tuples, lists and dicts) whose first dimension
    is ``batch``: the sample, text embeddings, SDXL's added conditions, ControlNet residuals."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value] if value.dim() > 0 and value.shape[0] == batch else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    return [tensor for item in items for tensor in _batched_tensors(batch, item)]


def warm_up_shapes(
    device: DevicePlan, compile_shapes: list[Shape], default_size: int, compiling: bool = False
) -> list[Shape]:
    """The shapes a worker warms a model up at before its first claim: on CUDA or when it
    compiles, the ``EASEL_COMPILE_SHAPES`` given, else the model's default size, so that no
    job pays a compile or a batch size's first-call set-up in the CUDA libraries (0.5-1.1 s
    once per size on an H100 and an H200, docs/benchmarks.md); an eager CPU worker none."""
    if not device.is_cuda and not compiling:
        return []
    return compile_shapes or [(default_size, default_size)]


def warm_up(
    pipe: Any,
    shapes: list[Shape],
    batch_sizes: Sequence[int] = (1,),
    steps: int = 2,
    vae_tiling_pixels: int = 0,
) -> dict[Shape, float]:
    """Short calls per shape (``warm_up_shapes``), so that no real job pays a compile or a
    batch size's first-call set-up.

    The first call at a batch size pays a per-size set-up on CUDA, compiled or not
    (0.5-1.1 s once per size, docs/benchmarks.md), so the worker passes every
    batch size it runs, guided (a UNet batch of twice the images), then one unguided
    image (a UNet batch of 1). With a compiled UNet the same calls make its two graphs
    per shape: ``compile_unet`` leaves one for a UNet batch of 1 and one for every
    larger batch, and the timestep dtype needs no call of its own (``compile_unet``
    casts it); dynamo's recompile limit is raised to the graphs this makes, so none
    falls back to eager. A batch size that runs out of GPU memory ends the larger ones
    (logged). Each call also decodes, in tiles where a job of that size would
    (``vae_tiling_pixels``, as ``generate_batch`` takes it). Uses a scheduler of its
    own, leaving the cached pipeline untouched. Returns the seconds per shape.
    """
    import torch
    import torch._dynamo

    from easel.worker.engine.generate import free_accelerator_memory

    if not shapes:
        return {}
    calls = [(size, 7.5) for size in sorted(set(batch_sizes) | {1})] + [(1, 1.0)]
    graphs = len(shapes) * len(calls)  # at most one graph per call
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, graphs)
    seconds: dict[Shape, float] = {}
    for width, height in shapes:
        started = time.perf_counter()
        too_big: int | None = None  # the batch size that ran out of GPU memory
        for size, guidance in calls:
            if too_big is not None and size >= too_big:
                continue
            try:
                _warm_up_call(pipe, width, height, size, guidance, steps, vae_tiling_pixels)
            except torch.cuda.OutOfMemoryError:
                free_accelerator_memory()
                too_big = size
                log.warning(
                    "warm-up at %dx%d stopped at a batch of %d images: out of GPU memory; larger "
                    "batches pay their set-up at their first job (which splits them if they do not fit)",
                    width,
                    height,
                    size,
                )
        seconds[(width, height)] = time.perf_counter() - started
        log.info("warmed up %dx%d in %.1fs", width, height, seconds[(width, height)])
    return seconds


def _warm_up_call(
    pipe: Any, width: int, height: int, size: int, guidance: float, steps: int, vae_tiling_pixels: int = 0
) -> None:
    import torch
    from PIL import Image

    from easel.worker.engine.generate import call_view

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    call = call_view(pipe, scheduler, use_vae_tiling(width, height, vae_tiling_pixels))  # as a job would
    extra: dict[str, Any] = {}
    if "Inpaint" in type(pipe).__name__:
        blank, mask = Image.new("RGB", (width, height)), Image.new("L", (width, height), 255)
        extra = {"image": [blank] * size, "mask_image": [mask] * size}
    with torch.inference_mode():
        call(
            prompt=["warm-up"] * size,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator("cpu").manual_seed(i) for i in range(size)],
            output_type="np",  # through the VAE: its first call at this size is paid here too
            **extra,
        )
