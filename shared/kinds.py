"""Job kinds: everything that depends on a job's type, in one table.

A kind (txt2img, img2img, inpaint) names the input images it requires (the other
kind inputs are refused), the type-specific knobs that apply to it and their defaults,
how its output size is chosen, and how the worker runs it: the diffusers auto-pipeline,
which inputs reach the call under which argument names, whether the call is given the
size, and the argument that takes the ControlNet's image. Validation, input storage,
retention, the job object, the runner, the pipeline choice, the CLI and the OpenAPI
document read it; adding a kind is a ``JobType`` member and a row of ``KINDS``.

``INPUTS`` are the input images any job may carry: the kinds' own (image, mask) and
the ControlNet's (control), which the ``control`` field governs, not the kind.

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from easel.shared.models import JobType


@dataclass(frozen=True)
class Input:
    """An input image a job may carry."""

    name: str
    """Its name in the job object's ``inputs``, its link and its storage key."""
    upload: str
    """The multipart file field (JSON: a base64 string of the same name, or ``control.image``)."""
    column: str
    """The ``Job`` column that holds its storage key."""
    mode: str
    """The PIL mode it is stored and loaded in."""
    resample: str
    """How the worker fits it to the output size: a ``PIL.Image.Resampling`` name."""
    by_kind: bool = True
    """Whether kinds require or refuse it (the ControlNet's image: the ``control`` field does)."""


INPUTS: tuple[Input, ...] = (
    Input("image", "image", "input_key", "RGB", "LANCZOS"),
    Input("mask", "mask", "mask_key", "L", "BILINEAR"),
    Input("control", "control_image", "control_key", "RGB", "LANCZOS", by_kind=False),
)
INPUT_NAMES: tuple[str, ...] = tuple(item.name for item in INPUTS)
INPUT_COLUMNS: tuple[str, ...] = tuple(item.column for item in INPUTS)
KIND_INPUTS: tuple[str, ...] = tuple(item.name for item in INPUTS if item.by_kind)
"""The inputs a kind requires or refuses."""


def input_named(name: str) -> Input:
    return next(item for item in INPUTS if item.name == name)


class SizeRule(StrEnum):
    """Where a job's output size comes from when the request leaves it out."""

    MODEL = "model"  # the model's default size
    INPUT = "input"  # the input image's size fitted to the model (a lone side keeps its aspect)
    SCALED = "scaled"  # the input image's size times ``scale``; width and height are refused


class CallSize(StrEnum):
    """Whether the pipeline call is given ``width`` and ``height``."""

    ALWAYS = "always"
    IF_TAKEN = "if_taken"  # when the pipeline's call takes them (SD3, Flux img2img); else the input's


class Engine(StrEnum):
    """What runs a kind on the worker."""

    DIFFUSERS = "diffusers"  # a pipeline of the job's model (worker.engine.generate)
    UPSCALE = "upscale"  # an upscaler, no diffusion (worker.engine.upscale)


@dataclass(frozen=True)
class Kind:
    """One job type and everything Easel does differently for it."""

    type: JobType
    summary: str
    inputs: tuple[str, ...]
    """The kind inputs it requires; the other ``KIND_INPUTS`` are refused."""
    knobs: Mapping[str, Any] = field(default_factory=dict)
    """The type-specific knobs (``KIND_KNOBS``) that apply, each with its default."""
    size: SizeRule = SizeRule.MODEL
    pipeline: str | None = "AutoPipelineForText2Image"
    """The diffusers auto-pipeline class that makes its pipeline from a loaded model (``None``:
    the kind runs no diffusers pipeline)."""
    call_inputs: Mapping[str, str] = field(default_factory=dict)
    """Input name -> the pipeline call's argument (one image per generated image)."""
    call_knobs: tuple[str, ...] = ()
    """The knobs passed to the pipeline call as they are (the others act before or after it)."""
    call_size: CallSize = CallSize.ALWAYS
    control_argument: str = "control_image"
    """The pipeline call's argument for the ControlNet's image."""
    engine: Engine = Engine.DIFFUSERS
    refuses: tuple[str, ...] = ()
    """Request fields that do not apply (refused when given; ``prompt`` then is not required)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Parameters the kind sets whatever the model's defaults (e.g. one step: one progress step)."""
    form: str = "pages.index"
    """The endpoint of its web form (``web.pages``)."""
    hires: bool = False
    """Whether its jobs may ask for a hires fix (``easel.shared.hires``): a second, img2img
    pass at a larger size."""
    sd_upscale: bool = False
    """Whether its jobs may ask for an SD upscale (``easel.shared.sd_upscale``): the input
    upscaled, then redrawn tile by tile."""

    @property
    def takes_prompt(self) -> bool:
        return "prompt" not in self.refuses

    @property
    def value(self) -> str:
        return self.type.value


KINDS: dict[JobType, Kind] = {
    kind.type: kind
    for kind in (
        Kind(
            JobType.TXT2IMG,
            "draw from the prompt",
            inputs=(),
            control_argument="image",
            hires=True,
        ),
        Kind(
            JobType.IMG2IMG,
            "redraw an image",
            inputs=("image",),
            knobs={"strength": 0.75},
            size=SizeRule.INPUT,
            pipeline="AutoPipelineForImage2Image",
            call_inputs={"image": "image"},
            call_knobs=("strength",),
            call_size=CallSize.IF_TAKEN,
            form="pages.edit",
            sd_upscale=True,
        ),
        Kind(
            JobType.INPAINT,
            "repaint the white of a mask",
            inputs=("image", "mask"),
            knobs={"strength": 1.0, "mask_blur": 4, "keep_unmasked": True},
            size=SizeRule.INPUT,
            pipeline="AutoPipelineForInpainting",
            call_inputs={"image": "image", "mask": "mask_image"},
            call_knobs=("strength",),
            form="pages.edit",
        ),
        Kind(
            JobType.UPSCALE,
            "enlarge an image with an upscaler",
            inputs=("image",),
            knobs={"upscaler": "lanczos", "scale": 2.0},
            size=SizeRule.SCALED,
            pipeline=None,
            engine=Engine.UPSCALE,
            refuses=(
                "prompt",
                "negative_prompt",
                "width",
                "height",
                "steps",
                "guidance_scale",
                "scheduler",
                "num_images",
                "loras",
                "control",
                "vae",
                "tiling",
            ),
            fixed={"steps": 1, "guidance_scale": 0.0, "num_images": 1},
            form="pages.upscale",
        ),
    )
}
assert set(KINDS) == set(JobType), "every JobType needs a row of KINDS"

KIND_NAMES: tuple[str, ...] = tuple(kind.value for kind in KINDS.values())
MODEL_TYPES: tuple[JobType, ...] = tuple(t for t, kind in KINDS.items() if kind.engine is Engine.DIFFUSERS)
"""The kinds a model's pipelines run (a model serves these unless its entry says fewer)."""
KIND_KNOBS: tuple[str, ...] = tuple(dict.fromkeys(name for kind in KINDS.values() for name in kind.knobs))
"""The knobs that apply to some kinds only."""


def kind_of(job_type: JobType | str) -> Kind:
    """The kind of ``job_type`` (``ValueError`` for an unknown one)."""
    return KINDS[JobType(job_type)]


def kinds_with(name: str) -> list[str]:
    """The kinds that take the knob, kind input or general field ``name``."""
    return [
        kind.value
        for kind in KINDS.values()
        if name in kind.knobs
        or name in kind.inputs
        or (name not in KIND_KNOBS + KIND_INPUTS and name not in kind.refuses)
    ]


def names(values: list[str] | tuple[str, ...], conjunction: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    head, last = list(values[:-1]), values[-1]
    return f"{', '.join(head)} {conjunction} {last}" if head else last


TYPE_DESCRIPTION = f"{names(KIND_NAMES, 'or')}."
"""The ``type`` field's description."""
