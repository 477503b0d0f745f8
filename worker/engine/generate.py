"""One pipeline call for one job or a batch of compatible jobs: a fresh scheduler, one
generator per image, a step callback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFilter

from easel.shared.families import ALL_SCHEDULERS, Family, family_of_pipeline
from easel.shared.hires import LATENT
from easel.shared.kinds import INPUTS, CallSize, kind_of
from easel.shared.params import BATCH_KEY, GenerationParams
from easel.worker.engine.adapters import control_kwargs, embedding_prompt, lora_scope
from easel.worker.engine.fastpath import set_vae_tiling, use_vae_tiling
from easel.worker.engine.seamless import seamless_scope
from easel.worker.engine.tiles import blend, split
from easel.worker.engine.weighting import uses_weighting, weighted_embeddings

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
    # Flow matching (SD3, Flux): made from the model's FlowMatchEuler config (shift, dynamic shifting).
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", {}),
    "flow_lcm": ("FlowMatchLCMScheduler", {}),
}
assert set(_SCHEDULER_TABLE) == set(ALL_SCHEDULERS), "easel.shared.families.ALL_SCHEDULERS is out of sync"


class JobCanceled(Exception):
    """Raised from the step callback to stop a pipeline at the next step."""


class TimeLimitExceeded(Exception):
    """Raised from the step callback when a batch runs past its time limit."""


@dataclass(frozen=True)
class GenerationRequest:
    """One job as the pipeline runs it: its parameters and its decoded inputs."""

    params: GenerationParams
    image: Image.Image | None = None  # img2img / inpaint: the input, RGB
    mask: Image.Image | None = None  # inpaint: L, white repaints
    control: Image.Image | None = None  # ControlNet: the control map (preprocessed), RGB


Upscaler = Callable[[Image.Image, tuple[int, int]], Image.Image]
"""(image, output size) -> the upscaled image (``engine.upscale.load_upscaler``)."""


@dataclass(frozen=True)
class HiresStage:
    """What a batch with a hires fix (``easel.shared.hires``) runs its second pass with: the
    img2img pipeline of the same model and adapters, and the upscaler of the decoded first
    pass (``None``: the latent upscaler)."""

    pipe: Any
    upscale: Upscaler | None = None


TILES_PER_CALL = 8
"""The most tiles of an SD upscale one pipeline call redraws."""

StepCallback = Callable[[int, int], None]
"""Called with (steps done, total steps); raises ``JobCanceled`` to stop."""

LatentCallback = Callable[[int, int, Any], None]
"""Called with (steps done, index in the batch of the first image of ``latents``, latents)
at every step: the live preview's hook (``engine.preview``), which decides itself when to
look."""


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler instance of kind ``name`` from the model's scheduler config."""
    import diffusers

    class_name, overrides = _SCHEDULER_TABLE[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


def with_scheduler(pipe: Any, scheduler: Any) -> Any:
    """A pipeline sharing ``pipe``'s modules but using its own ``scheduler``.

    The cached pipeline is never mutated, so later calls see it as it was loaded.
    """
    return with_components(pipe, scheduler=scheduler)


def with_components(pipe: Any, **components: Any) -> Any:
    """A pipeline of ``pipe``'s class sharing its modules but ``components`` (a
    ``scheduler``, a ``vae``), and its config. ``pipe`` itself is never mutated. Built
    with the pipeline's own constructor rather than ``from_pipe``, which casts the shared
    modules to float32 unless told otherwise and costs ~15x more.
    """
    _, optional = pipe._get_signature_keys(pipe)
    config = {key: pipe.config[key] for key in optional if key in pipe.config}
    return type(pipe)(**{**pipe.components, **components}, **config)


def call_view(pipe: Any, scheduler: Any, vae_tiling: bool) -> Any:
    """What one pipeline call runs: ``with_scheduler``'s view, without a progress bar, and
    VAE tiling set on or off (on the shared VAE, so every call sets it and none leaks into
    the next)."""
    view = with_scheduler(pipe, scheduler)
    view.set_progress_bar_config(disable=True)
    set_vae_tiling(view, vae_tiling)
    return view


class GpuOutOfMemory(RuntimeError):
    """Even one image at a time does not fit in the GPU's memory."""


@dataclass(frozen=True)
class _Item:
    """One image of a pipeline call: its job's prompts and inputs, and its own seed."""

    prompt: str
    negative_prompt: str
    seed: int
    inputs: Mapping[str, Image.Image]
    """Its job's inputs (``shared.kinds.INPUTS``) fitted to the output size, by name."""


def generate_batch(
    pipe: Any,
    requests: Sequence[GenerationRequest],
    on_step: StepCallback | None = None,
    *,
    vae_tiling_pixels: int = 0,
    on_latents: LatentCallback | None = None,
    hires: HiresStage | None = None,
    sd_upscale: Upscaler | None = None,
) -> list[list[Any]]:
    """Run compatible requests as one pipeline call; each request's images in seed order.

    ``pipe`` is the pipeline for the requests' job type (txt2img, img2img or inpaint).
    The requests must agree on ``BATCH_KEY`` (``easel.shared.params``); prompts, seeds, inputs and masks
    are per request. One generator per image makes each image the one its request
    would get alone. On CUDA out-of-memory the cache is freed and the call is retried
    as two halves (recursively); one image that still does not fit raises
    ``GpuOutOfMemory``. The VAE decodes in tiles from ``vae_tiling_pixels`` output
    pixels on (0: never). ``on_latents`` sees the latents after each step. A hires fix
    (the requests' ``hires``) needs ``hires``: the first pass at the requests' size, the
    upscale, then the second pass at the target size, one progress count over both.
    ``tiling`` pads the denoiser's and the VAE's convolutions circularly for the call
    (``engine.seamless``). An SD upscale (the requests' ``sd_upscale``) needs its upscaler
    as ``sd_upscale`` (``_sd_upscale_batch``).
    """
    if not requests:
        return []
    head = requests[0].params
    if head.hires is not None and hires is None:
        raise ValueError("a hires fix needs its second pass's pipeline (HiresStage)")
    for other in requests[1:]:
        if other.params.batch_key() != head.batch_key():
            raise ValueError(
                f"requests of one batch must share {', '.join(BATCH_KEY)}: "
                f"{head.batch_key()!r} != {other.params.batch_key()!r}"
            )
    if head.sd_upscale is not None:
        if sd_upscale is None:
            raise ValueError("an SD upscale needs its upscaler")
        tiles = use_vae_tiling(head.width, head.height, vae_tiling_pixels)
        return _sd_upscale_batch(pipe, requests, on_step, sd_upscale, tiles)
    per_request = [_items(request) for request in requests]  # inputs fitted once per request
    tiling = use_vae_tiling(head.width, head.height, vae_tiling_pixels)
    items = [item for items in per_request for item in items]
    second: _Second | None = None
    if head.hires is not None and hires is not None:
        target = head.output_size
        second = _Second(hires, use_vae_tiling(*target, vae_tiling_pixels))

    def call(part: list[_Item], offset: int) -> list[Any]:
        return _call(pipe, head, part, on_step, tiling, on_latents, offset, second)

    seamless = seamless_scope(bool(head.tiling), pipe, *([hires.pipe] if hires is not None else []))
    with lora_scope(pipe, head.loras), seamless:  # the call's LoRAs, weights and padding; undone after
        images = _generate_split(head, items, call)
    results: list[list[Any]] = []
    for request, items in zip(requests, per_request, strict=True):
        own, images = images[: len(items)], images[len(items) :]
        # Inpaint: what the mask keeps is the input's, exactly (a feathered seam between).
        params = request.params
        if "keep_unmasked" in kind_of(params.type).knobs and params.keep_unmasked is not False:
            source, mask = items[0].inputs["image"], items[0].inputs["mask"]  # _items checked both
            own = [keep_unmasked(out, source, mask, params.mask_blur or 0) for out in own]
        results.append(own)
    return results


def _sd_upscale_batch(
    pipe: Any,
    requests: Sequence[GenerationRequest],
    on_step: StepCallback | None,
    upscale: Upscaler,
    vae_tiling: bool,
) -> list[list[Any]]:
    """SD upscale (``easel.shared.sd_upscale``): each request's input upscaled to its output
    size and cut into tiles of its ``width`` x ``height``; every tile of every image redrawn
    by img2img, ``TILES_PER_CALL`` tiles a call, each tile with a fresh generator of its
    image's seed (so a tile's pixels depend on its job alone, not on its batch); the tiles
    of each image blended back. One progress count over all tiles' steps (counted as one
    image's tiles x steps, the ``denoising_steps`` of each job); no live preview."""
    head = requests[0].params
    upscaling = head.sd_upscale
    assert upscaling is not None
    tile, size = (head.width, head.height), upscaling.output_size
    items: list[_Item] = []
    for request in requests:
        params = request.params
        if request.image is None:
            raise ValueError(f"a {params.type.value} job needs its image input")
        pieces = split(upscale(request.image.convert("RGB"), size), tile, upscaling.overlap)
        items += [
            _Item(params.prompt, params.negative_prompt, seed, {"image": piece})
            for seed in params.seeds
            for piece in pieces
        ]
    finished = [0]  # tiles redrawn by earlier calls

    def call(part: list[_Item], offset: int) -> list[Any]:
        def progress(done: int, steps: int) -> None:  # steps: one tile's
            if on_step is not None:  # in tiles of one image x steps, as every job of the batch counts
                tile_steps = finished[0] * steps + done * len(part)  # of all images
                on_step(tile_steps * head.tiles // len(items), head.tiles * steps)

        return _call(pipe, head, part, progress, vae_tiling, None, offset)

    redrawn: list[Any] = []
    with lora_scope(pipe, head.loras):
        for start in range(0, len(items), TILES_PER_CALL):
            part = items[start : start + TILES_PER_CALL]
            redrawn += _generate_split(head, part, call, start)
            finished[0] += len(part)
    count = head.tiles  # of each image
    results: list[list[Any]] = []
    for request in requests:
        own: list[Any] = []
        for _seed in request.params.seeds:
            pieces, redrawn = redrawn[:count], redrawn[count:]
            fitted = [fit(piece, tile, Image.Resampling.LANCZOS) for piece in pieces]
            own.append(blend(fitted, size, upscaling.overlap))
        results.append(own)
    return results


def _items(request: GenerationRequest) -> list[_Item]:
    """The images of ``request``, each with the inputs its kind takes (and the ControlNet's)."""
    params = request.params
    size, kind = (params.width, params.height), kind_of(params.type)
    inputs = {}
    for item in INPUTS:
        if item.name in kind.inputs or (not item.by_kind and params.control is not None):
            picture = getattr(request, item.name)
            if picture is None:
                raise ValueError(
                    f"a {params.type.value} job{'' if item.by_kind else ' with a ControlNet'} "
                    f"needs its {item.name} input"
                )
            inputs[item.name] = fit(picture, size, Image.Resampling[item.resample])
    return [_Item(params.prompt, params.negative_prompt, seed, inputs) for seed in params.seeds]


def _generate_split(
    head: GenerationParams, items: list[_Item], call: Callable[[list[_Item], int], list[Any]], offset: int = 0
) -> list[Any]:
    """``call(items, offset)``; on GPU out-of-memory, the same for each half of ``items``."""
    import torch

    try:
        return call(items, offset)
    except torch.cuda.OutOfMemoryError as exc:
        free_accelerator_memory()
        if len(items) == 1:
            raise GpuOutOfMemory(
                f"out of GPU memory for one {head.width}x{head.height} image; "
                f"use a smaller size or a worker with more memory"
            ) from exc
        half = len(items) // 2
        log.warning(
            "out of GPU memory for %d images; retrying as %d + %d", len(items), half, len(items) - half
        )
        first = _generate_split(head, items[:half], call, offset)
        return first + _generate_split(head, items[half:], call, offset + half)


def free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class _Second:
    """A batch's hires stage and whether its second pass decodes in tiles."""

    stage: HiresStage
    tiling: bool


def _call(
    pipe: Any,
    head: GenerationParams,
    items: list[_Item],
    on_step: StepCallback | None,
    tiling: bool,
    on_latents: LatentCallback | None = None,
    offset: int = 0,
    second: _Second | None = None,
) -> list[Any]:
    import torch

    # 1. The model's family, and a fresh scheduler of it in a pipeline view that uses it.
    family = family_of_pipeline(type(pipe).__name__)
    if family is not None and head.scheduler not in family.schedulers:
        raise ValueError(
            f"scheduler {head.scheduler!r} does not fit the {family.describe()} family "
            f"(its schedulers: {', '.join(family.schedulers)})"
        )
    call_pipe = call_view(pipe, make_scheduler(head.scheduler, pipe.scheduler.config), tiling)
    # 2. One generator per image (on the CPU, so seeds give the same noise on any device).
    generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]

    # 3. Progress, cancel and the live preview at every denoising step (a hires fix: one
    # count over both passes, the second's steps planned from the first's on).
    passes = [0, head.hires.denoising_steps if head.hires is not None else 0]  # steps before, after

    def callback(pipeline: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        done, total = passes[0] + step + 1, passes[0] + int(getattr(pipeline, "num_timesteps", head.steps))
        if on_step is not None:
            on_step(done, total + passes[1])
        if on_latents is not None and "latents" in kwargs:
            on_latents(done, offset, kwargs["latents"])
        return kwargs

    # 4. The kind's call arguments (shared.kinds): its inputs at the output size, one per
    # image, its knobs that reach the call, and the size where the pipeline takes it.
    kind = kind_of(head.type)
    kwargs: dict[str, Any] = {
        arg: [item.inputs[name] for item in items] for name, arg in kind.call_inputs.items()
    }
    kwargs.update({name: getattr(head, name) for name in kind.call_knobs})
    if kind.call_size is CallSize.ALWAYS or takes_size(call_pipe):  # SD3, Flux img2img: else the input's
        kwargs.update(width=head.width, height=head.height)
    if head.control is not None:  # the ControlNet's image per image, and its scale
        kwargs.update(
            control_kwargs(head.type, [item.inputs["control"] for item in items], head.control.scale)
        )

    # 5. The prompts and guidance as the family takes them (family_prompts), each
    # loaded embedding a prompt names as a word replaced by its private tokens.
    kwargs.update(family_prompts(family, items))
    for name in ("prompt", "negative_prompt"):
        if name in kwargs:
            kwargs[name] = [embedding_prompt(call_pipe, text) for text in kwargs[name]]
    if uses_weighting(kwargs["prompt"], kwargs.get("negative_prompt", [])):  # (word:1.3): embeddings
        with torch.inference_mode():
            embeds = weighted_embeddings(call_pipe, kwargs.pop("prompt"), kwargs.pop("negative_prompt", []))
        kwargs.update(embeds)

    # 6. Denoise and decode (a hires fix's first pass: latents for the latent upscaler).
    latent = second is not None and head.hires is not None and head.hires.upscaler == LATENT
    with torch.inference_mode():
        result = call_pipe(
            num_inference_steps=head.steps,
            guidance_scale=head.guidance_scale,
            generator=generators,
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="latent" if latent else "pil",
            **kwargs,
        )
    if second is None or head.hires is None:
        return list(result.images)

    # 7. Hires fix: upscale the first pass to the target size, then the img2img pass there
    # with the same prompts and each image's generator as the first pass left it.
    hires, target = head.hires, head.output_size
    passes[:] = [int(getattr(call_pipe, "num_timesteps", head.steps)), 0]
    img2img = call_view(
        second.stage.pipe, make_scheduler(head.scheduler, pipe.scheduler.config), second.tiling
    )
    if latent:
        factor = int(getattr(img2img, "vae_scale_factor", 8))
        size = (target[1] // factor, target[0] // factor)
        image: Any = torch.nn.functional.interpolate(result.images, size=size, mode="bilinear")
    else:
        upscale = second.stage.upscale
        if upscale is None:
            raise ValueError(f"a hires fix with upscaler {hires.upscaler!r} needs it loaded")
        image = [upscale(picture, target) for picture in result.images]
    for name in ("width", "height"):
        kwargs.pop(name, None)
    if takes_size(img2img):
        kwargs.update(width=target[0], height=target[1])
    with torch.inference_mode():
        result = img2img(
            image=image,
            strength=hires.denoising_strength,
            num_inference_steps=hires.steps,
            guidance_scale=head.guidance_scale,
            generator=generators,
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="pil",
            **kwargs,
        )
    return list(result.images)


def takes_size(pipe: Any) -> bool:
    """Whether ``pipe``'s call takes ``width`` and ``height`` (SD3 and Flux img2img do; SD and
    SDXL img2img take the input image's size)."""
    import inspect

    return "width" in inspect.signature(type(pipe).__call__).parameters


def family_prompts(family: Family | None, items: list[_Item]) -> dict[str, Any]:
    """The prompt arguments of a call: classifier-free-guidance families (SD, SDXL, SD3) get
    the negative prompts (an empty one is what diffusers uses for none); a guidance-distilled
    family (Flux) gets none, so ``guidance_scale`` is its distilled guidance and
    ``true_cfg_scale`` stays at 1 (no second, unconditional pass)."""
    prompts: dict[str, Any] = {"prompt": [item.prompt for item in items]}
    if family is None or family.negative_prompt:
        prompts["negative_prompt"] = [item.negative_prompt for item in items]
    return prompts


def fit(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)


def keep_unmasked(output: Image.Image, source: Image.Image, mask: Image.Image, blur: int) -> Image.Image:
    """``output`` where the mask is white, ``source`` where it is black, blended between."""
    alpha = mask.convert("L")
    if blur:
        alpha = alpha.filter(ImageFilter.GaussianBlur(blur))
    return Image.composite(output.convert("RGB"), source.convert("RGB"), alpha)
