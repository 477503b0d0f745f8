"""Hires fix: a txt2img job drawn at its size, upscaled, then redrawn at the target size.

A job's ``hires`` asks for a second pass: the first pass draws at the job's ``width`` x
``height``; its result is upscaled to the target size (``latent``: the latents
interpolated; an upscaler's name, e.g. ``lanczos``: the decoded image upscaled, then
encoded again by the img2img pipeline), and an img2img pass of ``steps`` at
``denoising_strength`` redraws it there. One job, one progress bar over both passes.

``HiresRequest`` is what a request sends (a ``scale`` or a target ``width`` / ``height``);
``HiresRef`` is what the job row records and the batch key compares (the target size
resolved). Forms and multipart send ``hires_scale``, ``hires_upscaler``, ... fields
(``lift_hires_fields``).

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from easel.shared.nested_fields import lift_nested

LATENT = "latent"
"""The upscaler that interpolates the first pass's latents (no decode, no encode)."""
DEFAULT_SCALE = 2.0
DEFAULT_STRENGTH = 0.7
MAX_SCALE = 4.0
HIRES_FIELDS: tuple[str, ...] = ("scale", "width", "height", "upscaler", "steps", "denoising_strength")
"""The fields of ``hires``; forms and multipart send each as ``hires_<name>``."""


class HiresRef(BaseModel):
    """A job's resolved hires fix: the target size and how to get there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=8, le=8192, description="The output width (the job's width is the first pass's).")
    height: int = Field(ge=8, le=8192, description="The output height.")
    upscaler: str = Field(
        LATENT, min_length=1, max_length=128, description="latent, or an upscaler (GET /api/v1/upscalers)."
    )
    steps: int = Field(ge=1, le=1000, description="The second pass's steps (before denoising_strength).")
    denoising_strength: float = Field(
        DEFAULT_STRENGTH, gt=0, le=1, allow_inf_nan=False, description="How much the second pass changes."
    )

    @property
    def denoising_steps(self) -> int:
        """The steps the second (img2img) pass runs."""
        return min(int(self.steps * self.denoising_strength), self.steps)


class HiresRequest(BaseModel):
    """The ``hires`` field of a request: a ``scale`` of the job's size, or a target
    ``width`` / ``height`` (one of them keeps the aspect)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    scale: float | None = Field(
        None,
        ge=1,
        le=MAX_SCALE,
        allow_inf_nan=False,
        description=f"Factor of the job's width and height (default {DEFAULT_SCALE} without width, height).",
    )
    width: int | None = Field(None, ge=8, le=8192, description="Target width (instead of scale).")
    height: int | None = Field(None, ge=8, le=8192, description="Target height (instead of scale).")
    upscaler: str = Field(
        LATENT,
        min_length=1,
        max_length=128,
        description="latent (interpolate the latents) or an upscaler's name (GET /api/v1/upscalers).",
    )
    steps: int | None = Field(
        None, ge=0, le=1000, description="The second pass's steps; absent or 0: the job's steps."
    )
    denoising_strength: float = Field(
        DEFAULT_STRENGTH, gt=0, le=1, allow_inf_nan=False, description="How much the second pass changes."
    )


def target_size(request: HiresRequest, width: int, height: int, multiple: int) -> tuple[int, int]:
    """The size ``request`` asks for from a first pass of ``width`` x ``height``: its width
    and height, one of them with the other in the same aspect, or the size times its
    scale; computed sides rounded down to ``multiple``."""

    def fit(side: float) -> int:
        return max(multiple, int(side) // multiple * multiple)

    if request.width and request.height:
        return request.width, request.height
    if request.width:
        return request.width, fit(request.width * height / width)
    if request.height:
        return fit(request.height * width / height), request.height
    scale = request.scale if request.scale is not None else DEFAULT_SCALE
    return fit(width * scale), fit(height * scale)


def lift_hires_fields(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with form / multipart ``hires_<name>`` fields as the ``hires`` object: on
    when ``hires`` is a checked box or a scale, width or height is given (``lift_nested``)."""
    return lift_nested(data, "hires", HIRES_FIELDS, ("scale", "width", "height"))
