"""Model families: everything that depends on a model's architecture, in one table.

A family (SD 1.x/2.x, SDXL, SD3/3.5, Flux.1) decides the schedulers a model offers, its
defaults (steps, guidance, size), the multiple its sizes must be, the job types it
serves, how the negative prompt and guidance reach the pipeline, and which diffusers
pipeline classes belong to it. The web tier validates jobs against it and the worker
runs them from it.

The family is known without loading weights (the web tier never imports torch,
docs/design.md principle 3): from the ``_class_name`` of the model folder's
``model_index.json`` (a directory or the Hub cache), or from a ``family`` key in the
models file (required for single-file checkpoints). The worker checks that the pipeline
it loads belongs to the family (``worker.engine.pipelines``).

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from easel.shared.kinds import MODEL_TYPES
from easel.shared.models import JobType

DDPM_SCHEDULERS: tuple[str, ...] = ("ddim", "euler", "euler_a", "dpmpp_2m", "lcm", "pndm", "unipc")
"""Samplers of noise-prediction (DDPM-family) models: SD 1.x/2.x, SDXL."""

FLOW_SCHEDULERS: tuple[str, ...] = ("flow_euler", "flow_heun", "flow_lcm")
"""Samplers of flow-matching models (SD3, Flux)."""

ALL_SCHEDULERS: tuple[str, ...] = DDPM_SCHEDULERS + FLOW_SCHEDULERS

ALL_TYPES: tuple[JobType, ...] = MODEL_TYPES  # the kinds a model runs (easel.shared.kinds)


class FamilyName(StrEnum):
    SD = "sd"  # Stable Diffusion 1.x and 2.x
    SDXL = "sdxl"
    SD3 = "sd3"  # Stable Diffusion 3 and 3.5
    FLUX = "flux"  # Flux.1 (dev, schnell)


class Guidance(StrEnum):
    """What ``guidance_scale`` means to the pipeline."""

    CFG = "cfg"  # classifier-free guidance; the negative prompt is the unconditional branch
    DISTILLED = "distilled"  # an input of a guidance-distilled model (Flux); no negative prompt


@dataclass(frozen=True)
class Family:
    """One model family and everything Easel does differently for it."""

    name: FamilyName
    title: str
    schedulers: tuple[str, ...]
    default_scheduler: str
    default_steps: int
    default_guidance_scale: float
    default_size: int
    max_size: int
    size_multiple: int
    """Width and height must be multiples of this (VAE factor x transformer patch)."""
    job_types: tuple[JobType, ...]
    guidance: Guidance
    negative_prompt: bool
    """Whether jobs may carry a negative prompt."""
    pipelines: tuple[str, ...]
    """diffusers pipeline class names of the family: text-to-image first, then the
    img2img and inpaint classes ``from_pipe`` makes."""
    single_file_pipeline: str | None
    """The class whose ``from_single_file`` reads a checkpoint file of the family."""

    @property
    def text2image_pipeline(self) -> str:
        return self.pipelines[0]

    def describe(self) -> str:
        return f"{self.name.value} ({self.title})"


@dataclass(frozen=True)
class _Backbone:
    """What the families built on one kind of denoiser share."""

    schedulers: tuple[str, ...]
    default_scheduler: str
    default_steps: int
    size_multiple: int


_UNET = _Backbone(DDPM_SCHEDULERS, "euler_a", default_steps=30, size_multiple=8)
_FLOW_TRANSFORMER = _Backbone(FLOW_SCHEDULERS, "flow_euler", default_steps=28, size_multiple=16)


def _family(
    name: str,
    title: str,
    pipeline_prefix: str,
    backbone: _Backbone,
    guidance_scale: float,
    size: int,
    *,
    single_file: bool = False,
    guidance: Guidance = Guidance.CFG,
) -> Family:
    """A family whose pipelines are ``<prefix>Pipeline``, ``<prefix>Img2ImgPipeline`` and
    ``<prefix>InpaintPipeline``. Every family serves all job types at sizes up to twice its
    default, and takes a negative prompt exactly when it uses classifier-free guidance."""
    pipelines = tuple(f"{pipeline_prefix}{kind}Pipeline" for kind in ("", "Img2Img", "Inpaint"))
    return Family(
        name=FamilyName(name),
        title=title,
        schedulers=backbone.schedulers,
        default_scheduler=backbone.default_scheduler,
        default_steps=backbone.default_steps,
        default_guidance_scale=guidance_scale,
        default_size=size,
        max_size=2 * size,
        size_multiple=backbone.size_multiple,
        job_types=ALL_TYPES,
        guidance=guidance,
        negative_prompt=guidance is Guidance.CFG,
        pipelines=pipelines,
        single_file_pipeline=pipelines[0] if single_file else None,
    )


FAMILIES: dict[FamilyName, Family] = {
    family.name: family
    for family in (
        # name, title, pipeline class prefix, backbone, default guidance scale and size
        _family("sd", "Stable Diffusion 1.x / 2.x", "StableDiffusion", _UNET, 7.5, 512, single_file=True),
        _family("sdxl", "Stable Diffusion XL", "StableDiffusionXL", _UNET, 6.0, 1024, single_file=True),
        _family("sd3", "Stable Diffusion 3 / 3.5", "StableDiffusion3", _FLOW_TRANSFORMER, 7.0, 1024),
        replace(
            _family("flux", "Flux.1", "Flux", _FLOW_TRANSFORMER, 3.5, 1024, guidance=Guidance.DISTILLED),
            # flow_heun cannot take the custom sigmas Flux pipelines pass to set_timesteps.
            schedulers=("flow_euler", "flow_lcm"),
        ),
    )
}

_BY_PIPELINE: dict[str, Family] = {
    pipeline: family for family in FAMILIES.values() for pipeline in family.pipelines
}


def get_family(name: FamilyName | str) -> Family:
    """The family called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return FAMILIES[FamilyName(name)]
    except ValueError:
        known = ", ".join(f.value for f in FamilyName)
        raise ValueError(f"unknown model family {name!r}; known families: {known}") from None


def family_of_pipeline(class_name: str) -> Family | None:
    """The family whose pipelines include ``class_name`` (``None`` if no family does)."""
    return _BY_PIPELINE.get(class_name)


def family_from_model_index(folder: Path) -> Family | None:
    """The family named by ``folder/model_index.json``'s ``_class_name``; ``None`` when the
    file is missing. ``ValueError`` when it names a pipeline no family knows."""
    index = folder / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {str(index)!r}: {exc}") from exc
    family = family_of_pipeline(class_name)
    if family is None:
        known = ", ".join(sorted(_BY_PIPELINE))
        raise ValueError(
            f"{str(index)!r} names pipeline {class_name!r}, which no Easel model family serves "
            f"(known: {known})"
        )
    return family


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, as huggingface_hub resolves it."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def hub_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """The cached snapshot folder of Hub model ``repo_id`` (``None`` if not cached)."""
    repo = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    if ref.is_file():
        folder = repo / "snapshots" / ref.read_text().strip()
        return folder if folder.is_dir() else None
    snapshots = sorted((repo / "snapshots").glob("*/model_index.json"))
    return snapshots[-1].parent if snapshots else None
