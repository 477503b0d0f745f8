"""Upscalers: the names an upscale job may ask for, and where their weights are.

Built in: ``lanczos`` (Pillow's Lanczos resampling, no weights). Upscaler models (ESRGAN,
Real-ESRGAN, SwinIR, ... as ``.pth`` / ``.pt`` / ``.safetensors``) are ``[upscalers.NAME]``
tables of the models file (``location``), and the files of the models folders' upscaler
folders (A1111's ``ESRGAN/``, ``RealESRGAN/``, ..., ComfyUI's ``upscale_models/``:
``easel.shared.catalog``, joined by ``easel.shared.catalog_registry``; the models file's
win on a name). The worker loads them with spandrel (``worker.engine.upscale``).

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUILTIN_UPSCALERS: tuple[str, ...] = ("lanczos",)
MAX_UPSCALED_SIDE = 8192
"""The longest side an upscale job may produce (the job row's width and height bound)."""


class UpscalerSpec(BaseModel):
    """``[upscalers.NAME]``, or a file found in an upscaler folder: an upscaler model file;
    it fits every model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    location: str = Field(min_length=1, description="A .pth, .pt or .safetensors file spandrel reads.")


def read_upscalers(data: dict[str, Any], path: Path) -> dict[str, UpscalerSpec]:
    """The ``[upscalers.*]`` tables of a parsed models file; ``ValueError`` naming the file,
    table and problem."""
    specs: dict[str, UpscalerSpec] = {}
    for name, entry in data.get("upscalers", {}).items():
        where = f"models file {str(path)!r}, [upscalers.{name}]"
        if name in BUILTIN_UPSCALERS:
            raise ValueError(f"{where}: {name!r} is a built-in upscaler's name")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table")
        try:
            specs[name] = UpscalerSpec(name=name, **entry)
        except ValidationError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    return specs


def upscaler_names(registry: Any) -> list[str]:
    """Every upscaler ``registry`` knows: the built-in ones first, then its models by name."""
    return [*BUILTIN_UPSCALERS, *sorted(getattr(registry, "upscalers", None) or {})]


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """An image's size times ``scale``, rounded, at least 1 pixel a side."""
    return max(1, round(width * scale)), max(1, round(height * scale))
