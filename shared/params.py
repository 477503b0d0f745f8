"""The generation parameters: one typed definition, and the one batch key.

``GenerationParams`` names every parameter of a generation, its type, its bounds and
its meaning. The request schema (``easel.shared.schemas``) takes each knob's bounds
and description from it, the job row records exactly its fields, the engine runs
from it, and the form and the CLI list its fields. ``BATCH_KEY`` says which of them
jobs must share to run in one pipeline call (docs/design.md, principle 5).

Textual-inversion embeddings are no parameter: an embedding is used by its name as a
word of the prompt or negative prompt (``easel.shared.adapters.mentioned_embeddings``),
so it belongs to that prompt, like the prompt's other words, and not to the batch key.
The worker loads every embedding a batch's prompts use before the call, and a loaded
embedding changes nothing for a prompt that does not use it, so a job draws the same
pixels alone or batched with prompts that use other embeddings.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo

from easel.shared.adapters import ControlRef, LoraRef
from easel.shared.hires import HiresRef
from easel.shared.kinds import TYPE_DESCRIPTION
from easel.shared.models import JobType
from easel.shared.sd_upscale import SdUpscaleRef, tile_count

MAX_SEED = 2**53 - 1  # exact in JavaScript numbers, so a page can show it unchanged


class GenerationParams(BaseModel):
    """A job's resolved generation parameters, as its row records them (seed included)."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    type: JobType = Field(description=TYPE_DESCRIPTION)
    model: str = Field(max_length=128, description="Registry name; default model.")
    prompt: str = Field("", description="What to draw (empty for kinds without a prompt: upscale).")
    negative_prompt: str = Field("", description="What to steer away from.")
    width: int = Field(ge=8, le=8192, description="Multiple of 8 within the model's limits.")
    height: int = Field(ge=8, le=8192, description="Multiple of 8 within the model's limits.")
    steps: int = Field(ge=1, le=1000, description="Denoising steps.")
    guidance_scale: float = Field(ge=0, le=50, allow_inf_nan=False, description="Classifier-free guidance.")
    scheduler: str = Field(description="A scheduler the model offers (GET /api/v1/models).")
    seed: int = Field(ge=0, le=MAX_SEED, description="Chosen and recorded if absent.")
    num_images: int = Field(1, ge=1, le=16, description="Images; seeds are seed, seed+1, ...")
    strength: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="img2img / inpaint: how much to change (default 0.75 / 1.0).",
    )
    mask_blur: int | None = Field(
        None, ge=0, le=64, description="inpaint: feather of the mask edge in pixels."
    )
    keep_unmasked: bool | None = Field(
        None, description="inpaint: paste pixels outside the mask back from the input (default true)."
    )
    loras: tuple[LoraRef, ...] = Field(
        (), description="LoRA adapters and their weights, sorted by name (docs/models.md)."
    )
    control: ControlRef | None = Field(None, description="The ControlNet and its scale (docs/models.md).")
    vae: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="A VAE of the registry to decode (and encode) with; absent: the model's own.",
    )
    upscaler: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="upscale: the upscaler (GET /api/v1/upscalers; built in: lanczos).",
    )
    scale: float | None = Field(
        None, ge=1, le=8, allow_inf_nan=False, description="upscale: the factor of both sides (default 2)."
    )
    hires: HiresRef | None = Field(
        None,
        description="txt2img: hires fix, a second img2img pass at hires.width x hires.height (the "
        "job's width and height are the first pass's).",
    )
    sd_upscale: SdUpscaleRef | None = Field(
        None,
        description="img2img: SD upscale, the input upscaled by sd_upscale.scale, then redrawn in "
        "tiles of width x height blended in their overlaps (the output is sd_upscale.width x "
        "sd_upscale.height).",
    )
    tiling: bool | None = Field(
        None,
        description="Seamless textures: the picture wraps around at its edges, so it tiles "
        "without seams (circular padding in the model's convolutions); absent or false: none.",
    )

    @field_validator("loras", mode="before")
    @classmethod
    def _no_loras(cls, value: Any) -> Any:
        return () if value is None else value

    @field_validator("tiling")
    @classmethod
    def _no_tiling(cls, value: bool | None) -> bool | None:
        return value or None  # false is absent: one batch key, one row value (NULL)

    @property
    def seeds(self) -> tuple[int, ...]:
        """One seed per image: ``seed, seed+1, ...``."""
        return tuple(self.seed + i for i in range(self.num_images))

    @property
    def denoising_steps(self) -> int:
        """Steps the pipeline will run: img2img and inpaint skip the first ``1 - strength``;
        a hires fix adds its second pass's; an SD upscale runs them for each tile."""
        if self.strength is None:
            return self.steps + (self.hires.denoising_steps if self.hires is not None else 0)
        steps = min(int(self.steps * self.strength), self.steps)
        return steps * self.tiles  # an SD upscale: its tiles (of all images at once) x steps

    @property
    def tiles(self) -> int:
        """The tiles of each image an SD upscale redraws (1 without one)."""
        if self.sd_upscale is None:
            return 1
        return tile_count(self.sd_upscale.output_size, (self.width, self.height), self.sd_upscale.overlap)

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the images: the hires fix's target, an SD upscale's output, else
        ``width`` x ``height``."""
        if self.hires is not None:
            return self.hires.width, self.hires.height
        if self.sd_upscale is not None:
            return self.sd_upscale.output_size
        return self.width, self.height

    def batch_key(self) -> tuple[Any, ...]:
        """What jobs must share to run in one pipeline call."""
        return tuple(getattr(self, name) for name in BATCH_KEY)

    def recorded(self) -> dict[str, Any]:
        """The ``params`` of the job object: every parameter but type and model, the
        type-specific ones only where they apply."""
        values = self.model_dump(mode="json", exclude={"type", "model"})
        return {name: value for name, value in values.items() if value is not None and value != []}


PARAM_FIELDS: tuple[str, ...] = tuple(GenerationParams.model_fields)
"""Every generation parameter, in the order of the definition."""

KNOBS: tuple[str, ...] = tuple(
    name
    for name in PARAM_FIELDS
    if name not in ("type", "model", "prompt", "loras", "control", "hires", "sd_upscale")
)
"""The scalar parameters a client may leave to the model's defaults (form fields, CLI options)."""

BATCH_KEY: tuple[str, ...] = (
    "model",
    "type",
    "width",
    "height",
    "steps",
    "scheduler",
    "guidance_scale",
    "strength",
    "loras",
    "control",
    "vae",
    "upscaler",
    "scale",
    "hires",
    "sd_upscale",
    "tiling",
)
"""Parameters jobs must share to run in one pipeline call; prompts (with the embeddings
they name), seeds and inputs (the control image too) are per image. ``loras``,
``control``, ``hires`` and ``sd_upscale`` are canonical JSON text in the row
(``easel.shared.models.CanonicalJson``), so SQL equality compares them."""


def knob(name: str, description: str | None = None) -> Any:
    """A request field for parameter ``name``: its bounds and description, no default
    (unset knobs take the model's defaults)."""
    info: FieldInfo = GenerationParams.model_fields[name]
    return Field(
        None,
        description=description or info.description,
        **bounds(name),
    )


def bounds(name: str) -> dict[str, Any]:
    """Parameter ``name``'s constraints (``ge``, ``le``, ``max_length``, ...) as ``Field`` arguments."""
    constraints: dict[str, Any] = {}
    for item in GenerationParams.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length", "allow_inf_nan"):
            value = getattr(item, key, None)
            if value is not None:
                constraints[key] = value
    return constraints


def params_of(row: Any) -> GenerationParams:
    """The parameters a job row (or any object with those attributes) records."""
    return GenerationParams.model_validate(row)
