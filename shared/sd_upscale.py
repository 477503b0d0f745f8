"""SD upscale: an img2img job that enlarges its input, then redraws it tile by tile.

AUTOMATIC1111's "SD upscale" script as a job field. A job's ``sd_upscale`` upscales the
input image by ``scale`` with ``upscaler`` (``lanczos`` or an upscaler model), cuts the
result into tiles of the job's ``width`` x ``height`` that overlap by at least
``overlap`` pixels (``grid``), runs img2img on every tile (the job's prompt, strength,
steps; every tile of an image with that image's seed) and blends the tiles back with
linear ramps across each overlap (``worker.engine.tiles``). The output is the input's
size times ``scale``; the job's width and height are the tile's, not the output's.

``SdUpscaleRequest`` is what a request sends; ``SdUpscaleRef`` is what the job row
records and the batch key compares (the output size resolved). Forms and multipart send
``sd_upscale_upscaler``, ``sd_upscale_scale``, ``sd_upscale_overlap``
(``lift_sd_upscale_fields``).

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from easel.shared.nested_fields import lift_nested

DEFAULT_UPSCALER = "lanczos"
DEFAULT_SCALE = 2.0
DEFAULT_OVERLAP = 64
MAX_SCALE = 4.0
MAX_OVERLAP = 256
SD_UPSCALE_FIELDS: tuple[str, ...] = ("upscaler", "scale", "overlap")
"""The fields of ``sd_upscale``; forms and multipart send each as ``sd_upscale_<name>``."""


class SdUpscaleRequest(BaseModel):
    """The ``sd_upscale`` field of an img2img request."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    upscaler: str = Field(
        DEFAULT_UPSCALER,
        min_length=1,
        max_length=128,
        description="The upscaler that enlarges the input first (GET /api/v1/upscalers; built in: lanczos).",
    )
    scale: float = Field(
        DEFAULT_SCALE, gt=1, le=MAX_SCALE, allow_inf_nan=False, description="Factor of the input's sides."
    )
    overlap: int = Field(
        DEFAULT_OVERLAP,
        ge=0,
        le=MAX_OVERLAP,
        description="Pixels neighbouring tiles share at least (blended there); smaller than the tile.",
    )


class SdUpscaleRef(SdUpscaleRequest):
    """A job's resolved SD upscale: the request's fields and the output size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=1, le=8192, description="The output width: the input's times scale.")
    height: int = Field(ge=1, le=8192, description="The output height.")

    @property
    def output_size(self) -> tuple[int, int]:
        return self.width, self.height


def axis_positions(size: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of ``tile`` pixels start along a side of ``size`` pixels so that
    neighbours share at least ``overlap`` pixels: as few tiles as that allows, spread
    evenly, the first at 0 and the last at ``size - tile`` (A1111's ``split_grid``).
    ``tile`` must not exceed ``size``, and ``overlap`` must be smaller than ``tile``."""
    if tile > size or not 0 <= overlap < tile:
        raise ValueError(f"tiles of {tile} overlapping by {overlap} do not fit a side of {size}")
    count = max(1, math.ceil((size - overlap) / (tile - overlap)))
    if count == 1:
        return [0]
    spacing = (size - tile) / (count - 1)
    return [min(int(index * spacing), size - tile) for index in range(count - 1)] + [size - tile]


def grid(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> tuple[list[int], list[int]]:
    """The tiles' left edges and top edges for an image of ``size`` (width, height)."""
    return axis_positions(size[0], tile[0], overlap), axis_positions(size[1], tile[1], overlap)


def tile_count(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> int:
    """How many tiles ``grid`` cuts an image of ``size`` into."""
    xs, ys = grid(size, tile, overlap)
    return len(xs) * len(ys)


def lift_sd_upscale_fields(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with form / multipart ``sd_upscale_<name>`` fields as the ``sd_upscale``
    object: on when ``sd_upscale`` is a checked box or a scale is given (``lift_nested``)."""
    return lift_nested(data, "sd_upscale", SD_UPSCALE_FIELDS, ("scale",))
