"""The model registry: names mapped to weight sources and per-model limits.

The built-in registry holds two models: ``demo-shapes``, trained by the project to draw
coloured shapes (its weights ship in the package, ``worker/engine/demo_shapes``), and
``tiny-sd``, random weights built locally on first use (fast; for tests and
benchmarks). ``EASEL_MODELS_FILE`` points at a TOML file that replaces them::

    [models.sd15]
    source = "huggingface"            # or "directory", "single_file", "tiny"
    location = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    max_size = 768

This module never imports torch: the web tier reads limits from it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from easel.shared.errors import UnknownModel
from easel.shared.models import JobType
from easel.shared.settings import Settings

SCHEDULERS: tuple[str, ...] = ("ddim", "euler", "euler_a", "dpmpp_2m", "lcm", "pndm", "unipc")


class ModelSource(StrEnum):
    HUGGINGFACE = "huggingface"  # a Hub id, read from the local cache when offline
    DIRECTORY = "directory"  # a diffusers folder (model_index.json)
    SINGLE_FILE = "single_file"  # one .safetensors / .ckpt checkpoint
    TINY = "tiny"  # the tiny SD-shaped model Easel builds itself


class ModelSpec(BaseModel):
    """One servable model and the limits its jobs are validated against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: ModelSource
    location: str = ""
    config: str | None = Field(None, description="Diffusers config folder for single files.")
    types: tuple[JobType, ...] = (JobType.TXT2IMG, JobType.IMG2IMG, JobType.INPAINT)
    inpainting: bool = Field(False, description="A dedicated inpainting checkpoint (9-channel UNet).")
    min_size: int = Field(64, ge=8, multiple_of=8)
    max_size: int = Field(1024, ge=8, multiple_of=8)
    default_size: int = Field(512, ge=8, multiple_of=8)
    max_steps: int = Field(150, ge=1)
    default_steps: int = Field(30, ge=1)
    default_guidance_scale: float = 7.5
    default_scheduler: str = "euler_a"
    max_num_images: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if not self.min_size <= self.default_size <= self.max_size:
            raise ValueError(
                f"model {self.name!r}: default_size {self.default_size} is outside "
                f"[{self.min_size}, {self.max_size}]"
            )
        if self.default_scheduler not in SCHEDULERS:
            raise ValueError(f"model {self.name!r}: unknown default_scheduler {self.default_scheduler!r}")
        if self.inpainting and set(self.types) != {JobType.INPAINT}:
            raise ValueError(
                f"model {self.name!r}: an inpainting checkpoint serves only inpaint jobs; "
                f'set types = ["inpaint"]'
            )
        if self.source is not ModelSource.TINY and not self.location:
            raise ValueError(f"model {self.name!r}: source {self.source} needs a location")
        return self


DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "worker" / "engine" / "demo_shapes"
"""The committed ``demo-shapes`` pipeline (``easel/worker/engine/demo_shapes`` once installed)."""


def demo_spec() -> ModelSpec:
    """``demo-shapes``: "a {color} {shape} on a {color} background" at 64x64 (or 128x128)."""
    return ModelSpec(
        name="demo-shapes",
        source=ModelSource.DIRECTORY,
        location=str(DEMO_MODEL_DIR),
        min_size=64,
        max_size=128,
        default_size=64,
        max_steps=150,
        default_steps=20,
        default_guidance_scale=7.0,
        default_scheduler="ddim",
    )


def tiny_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(
        name="tiny-sd",
        source=ModelSource.TINY,
        location=str(settings.models_dir / "tiny-sd"),
        min_size=64,
        max_size=512,
        default_size=256,
        max_steps=150,
        default_steps=20,
        default_guidance_scale=7.5,
        default_scheduler="euler_a",
    )


class Registry:
    """The models a deployment knows, by name."""

    def __init__(self, specs: list[ModelSpec], default: str) -> None:
        self._specs = {spec.name: spec for spec in specs}
        if default not in self._specs:
            raise UnknownModel(
                f"default model {default!r} is not in the registry (known: {', '.join(sorted(self._specs))})"
            )
        self.default = default

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str | None) -> ModelSpec:
        """The spec for ``name`` (the default model when ``None``)."""
        key = name or self.default
        try:
            return self._specs[key]
        except KeyError:
            raise UnknownModel(f"unknown model {key!r}; known models: {', '.join(self.names())}") from None


def load_registry(settings: Settings) -> Registry:
    """The registry from ``EASEL_MODELS_FILE``, or the built-in demo-shapes and tiny-sd."""
    if settings.models_file is None:
        return Registry([demo_spec(), tiny_spec(settings)], settings.default_model)
    return Registry(_read_models_file(settings.models_file, settings), settings.default_model)


def _read_models_file(path: Path, settings: Settings) -> list[ModelSpec]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read models file {str(path)!r}: {exc}") from exc
    specs = []
    for name, entry in data.get("models", {}).items():
        entry = dict(entry)
        if entry.get("source") == ModelSource.TINY and not entry.get("location"):
            entry["location"] = str(settings.models_dir / name)
        try:
            specs.append(ModelSpec(name=name, **entry))
        except ValidationError as exc:
            raise ValueError(f"models file {str(path)!r}, model {name!r}: {exc}") from exc
    if not specs:
        raise ValueError(f"models file {str(path)!r} defines no [models.NAME] table")
    return specs
