"""The model registry: names mapped to weight sources and per-model limits.

The built-in registry holds two models: ``demo-shapes``, trained by the project to draw
coloured shapes (its weights ship in the package, ``worker/engine/demo_shapes``), and
``tiny-sd``, random weights built locally on first use (fast; for tests and
benchmarks). ``EASEL_MODELS_FILE`` points at a TOML file that replaces them::

    [models.sd15]
    source = "huggingface"            # or "directory", "single_file", "tiny"
    location = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    family = "sd"                     # optional where model_index.json is readable
    max_size = 768

Each model belongs to a family (``easel.shared.families``): read from its
``model_index.json`` (a folder, or the Hub cache) unless ``family`` says it; required for
single files. Unset defaults (scheduler, steps, guidance, size, job types) are the
family's. This module never imports torch: the web tier reads limits from it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from easel.shared.adapters import ControlNetSpec, EmbeddingSpec, LoraSpec, VaeSpec, read_tables
from easel.shared.errors import UnknownModel
from easel.shared.families import (
    ALL_TYPES,
    DDPM_SCHEDULERS,
    Family,
    FamilyName,
    family_from_model_index,
    get_family,
    hub_snapshot,
)
from easel.shared.models import JobType
from easel.shared.settings import Settings
from easel.shared.upscalers import UpscalerSpec, read_upscalers

SCHEDULERS: tuple[str, ...] = DDPM_SCHEDULERS
"""The samplers of SD 1.x/2.x and SDXL models; a model's own are ``spec.family_info.schedulers``."""

_FAMILY_DEFAULTS = (
    "default_scheduler",
    "default_steps",
    "default_guidance_scale",
    "default_size",
    "max_size",
)


class ModelSource(StrEnum):
    HUGGINGFACE = "huggingface"  # a Hub id, read from the local cache when offline
    DIRECTORY = "directory"  # a diffusers folder (model_index.json)
    SINGLE_FILE = "single_file"  # one .safetensors / .ckpt checkpoint
    TINY = "tiny"  # the tiny SD-shaped model Easel builds itself
    CATALOG = "catalog"  # found in a worker's models folder; only the workers know the file


class ModelSpec(BaseModel):
    """One servable model and the limits its jobs are validated against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: ModelSource
    location: str = ""
    family: FamilyName = Field(
        FamilyName.SD,  # never used: _family_defaults reads it from model_index.json when not given
        description="sd, sdxl, sd3 or flux; read from model_index.json when not given.",
    )
    config: str | None = Field(None, description="Diffusers config folder for single files.")
    architecture: str | None = Field(
        None,
        max_length=32,
        description='The base within the family ("sd1", "sd2", "sdxl", "sdxl-refiner", ...), read from '
        "a found file's keys; adapters made for another base do not fit.",
    )
    types: tuple[JobType, ...] = Field(
        ALL_TYPES,  # replaced by the family's job types when not given (_family_defaults)
        description="Job types served; default: all the family's.",
    )
    inpainting: bool = Field(False, description="A dedicated inpainting checkpoint (9-channel UNet).")
    min_size: int = Field(64, ge=8, multiple_of=8)
    max_size: int = Field(1024, ge=8, multiple_of=8)
    default_size: int = Field(512, ge=8, multiple_of=8)
    max_steps: int = Field(150, ge=1)
    default_steps: int = Field(30, ge=1)
    default_guidance_scale: float = 7.5
    default_scheduler: str = "euler_a"
    max_num_images: int = Field(4, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """Resolve the family when not given, then take its defaults for unset fields."""
        if not isinstance(data, dict):
            return data
        data, given = dict(data), set(data)
        if data.get("family") is None:
            data["family"] = detect_family(data)
        family = get_family(data["family"])
        for key in _FAMILY_DEFAULTS:
            data.setdefault(key, getattr(family, key))
        if "max_size" in given and "default_size" not in given:  # a smaller cap lowers the default
            data["default_size"] = min(data["default_size"], data["max_size"])
        if "default_size" in given and "max_size" not in given:
            data["max_size"] = max(data["max_size"], data["default_size"])
        data.setdefault("types", family.job_types)
        return data

    @property
    def family_info(self) -> Family:
        """The family's schedulers, defaults, job types and pipelines."""
        return get_family(self.family)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if not self.min_size <= self.default_size <= self.max_size:
            raise ValueError(
                f"model {self.name!r}: default_size {self.default_size} is outside "
                f"[{self.min_size}, {self.max_size}]"
            )
        family = self.family_info
        if self.default_scheduler not in family.schedulers:
            raise ValueError(
                f"model {self.name!r}: default_scheduler {self.default_scheduler!r} is not one of the "
                f"{family.describe()} family's schedulers ({', '.join(family.schedulers)})"
            )
        for key in ("min_size", "max_size", "default_size"):
            if getattr(self, key) % family.size_multiple:
                raise ValueError(
                    f"model {self.name!r}: {key} {getattr(self, key)} is not a multiple of "
                    f"{family.size_multiple}, the {family.describe()} family's size multiple"
                )
        if extra := [t.value for t in self.types if t not in family.job_types]:
            raise ValueError(
                f"model {self.name!r}: the {family.describe()} family does not serve {', '.join(extra)} jobs"
            )
        if self.source is ModelSource.SINGLE_FILE and family.single_file_pipeline is None:
            raise ValueError(
                f"model {self.name!r}: single-file checkpoints of the {family.describe()} family are not "
                f'supported; use a diffusers folder (source = "directory") or a Hub id'
            )
        if self.inpainting and set(self.types) != {JobType.INPAINT}:
            raise ValueError(
                f"model {self.name!r}: an inpainting checkpoint serves only inpaint jobs; "
                f'set types = ["inpaint"]'
            )
        if self.source not in (ModelSource.TINY, ModelSource.CATALOG) and not self.location:
            raise ValueError(f"model {self.name!r}: source {self.source} needs a location")
        return self


def detect_family(entry: dict[str, Any], offline: bool = True) -> FamilyName:
    """The family of a models-file entry that does not name one, from its
    ``model_index.json``: the folder itself, the Hub cache, or (``offline`` false) the Hub.
    ``ValueError`` saying to add ``family`` when none of them tells."""
    source, location, name = entry.get("source"), entry.get("location") or "", entry.get("name")
    where = ""
    if source == ModelSource.TINY:
        return FamilyName.SD
    if source == ModelSource.DIRECTORY and location:
        family, where = family_from_model_index(Path(location)), f"no model_index.json in {location!r}"
    elif source == ModelSource.HUGGINGFACE and location:
        snapshot = hub_snapshot(location)
        family = family_from_model_index(snapshot) if snapshot else None
        if family is None and not offline:
            family = _family_from_hub(location)
        where = f"{location!r} is not in the Hugging Face cache" + (" (offline)" if offline else "")
    elif source == ModelSource.SINGLE_FILE and location:
        # no model_index.json: the architecture from the file's keys and shapes (torch-free)
        from easel.shared.classify import checkpoint_architecture
        from easel.shared.weights_header import UnreadableWeights, read_header

        try:
            architecture, found = checkpoint_architecture(read_header(Path(location)))
        except UnreadableWeights as exc:
            architecture, found, reason = None, None, str(exc)
        else:
            reason = (
                f"{Path(location).name} holds no checkpoint architecture Easel recognises"
                if architecture is None
                else f"{Path(location).name} is a {architecture!r} checkpoint, which no Easel family serves"
            )
        family = get_family(found) if found else None
        where = f"{reason}, and a single-file checkpoint has no model_index.json"
    else:
        return FamilyName.SD  # no location: the "needs a location" check explains
    if family is None:
        known = " | ".join(f'"{f.value}"' for f in FamilyName)
        raise ValueError(f"cannot tell model {name!r}'s family: {where}; set family = {known} in its table")
    return family.name


def _family_from_hub(repo_id: str) -> Family | None:
    """The family from the Hub's ``model_index.json`` of ``repo_id`` (downloads only that file)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    try:
        return family_from_model_index(Path(hf_hub_download(repo_id, "model_index.json")).parent)
    except ValueError:
        raise
    except Exception:
        return None


DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "worker" / "engine" / "demo_shapes"
"""The committed ``demo-shapes`` pipeline (``easel/worker/engine/demo_shapes`` once installed)."""


# The built-in models give only what differs from ModelSpec's and the SD family's defaults.


def demo_spec() -> ModelSpec:
    """``demo-shapes``: "a {color} {shape} on a {color} background" at 64x64 (or 128x128)."""
    return ModelSpec(
        name="demo-shapes",
        source=ModelSource.DIRECTORY,
        location=str(DEMO_MODEL_DIR),
        max_size=128,
        default_size=64,
        default_steps=20,
        default_guidance_scale=7.0,
        default_scheduler="ddim",
    )


def tiny_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(
        name="tiny-sd",
        source=ModelSource.TINY,
        location=str(settings.built_models_dir / "tiny-sd"),
        max_size=512,
        default_size=256,
        default_steps=20,
    )


DEMO_MODEL = "demo-shapes"
BUILTIN_DEFAULT = "tiny-sd"


class Registry:
    """The models a deployment knows, by name.

    ``default`` is the model a job naming none gets: ``requested`` (``EASEL_DEFAULT_MODEL``)
    when given, else ``demo-shapes`` when present, else the first model by name
    (``choose_default``). ``strict`` registries (a models file, the built-ins) refuse a
    requested default they lack; a registry that grows from workers' catalogs
    (``EASEL_MODELS_DIR``) may not hold it yet, and says so when a job needs it.
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        default: str | None,
        loras: dict[str, LoraSpec] | None = None,
        controlnets: dict[str, ControlNetSpec] | None = None,
        vaes: dict[str, VaeSpec] | None = None,
        embeddings: dict[str, EmbeddingSpec] | None = None,
        *,
        strict: bool = True,
        upscalers: dict[str, UpscalerSpec] | None = None,
    ) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self.loras = loras or {}  # [loras.NAME] of the models file (easel.shared.adapters)
        self.controlnets = controlnets or {}  # [controlnets.NAME]
        self.vaes = vaes or {}  # [vaes.NAME]
        self.embeddings = embeddings or {}  # [embeddings.NAME]
        self.upscalers = upscalers or {}  # [upscalers.NAME] (easel.shared.upscalers)
        self.requested_default = default
        if strict and default is not None and default not in self._specs:
            raise UnknownModel(
                f"default model {default!r} is not in the registry (known: {', '.join(sorted(self._specs))})"
            )
        self.default = choose_default(self._specs, default)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str | None) -> ModelSpec:
        """The spec for ``name`` (the default model when ``None``)."""
        key = name or self.default
        if key is None:
            requested = self.requested_default
            wanted = f"default model {requested!r}" if requested else "no default model"
            raise UnknownModel(
                f"{wanted} is not available yet (no worker has published it); "
                f"known models: {', '.join(self.names()) or 'none'}"
            )
        try:
            return self._specs[key]
        except KeyError:
            raise UnknownModel(f"unknown model {key!r}; known models: {', '.join(self.names())}") from None


def choose_default(names: Iterable[str], requested: str | None) -> str | None:
    """The default model among ``names``: ``requested`` if it is there, else ``demo-shapes``,
    else the first by name (``None`` for no models, or a requested one not there yet)."""
    names = sorted(names)
    if requested is not None:
        return requested if requested in names else None
    if DEMO_MODEL in names:
        return DEMO_MODEL
    return names[0] if names else None


def load_registry(settings: Settings) -> Registry:
    """The registry from ``EASEL_MODELS_FILE``, else the built-in demo-shapes and tiny-sd
    unless ``EASEL_MODELS_DIR`` is set: a models folder, like a models file, replaces the
    built-ins (its models join the registry from the workers' catalogs,
    ``easel.shared.catalog_store``)."""
    if settings.models_file is None:
        if settings.models_roots:
            return Registry([], settings.default_model, strict=False)
        builtins = [demo_spec(), tiny_spec(settings)]
        return Registry(builtins, settings.default_model or BUILTIN_DEFAULT)
    specs = _read_models_file(settings.models_file, settings)
    data = tomllib.loads(settings.models_file.read_text())  # read once above: it parses
    tables = read_tables(data, settings.models_file, {spec.name for spec in specs})
    upscalers = read_upscalers(data, settings.models_file)
    return Registry(
        specs, settings.default_model, *tables, strict=not settings.models_roots, upscalers=upscalers
    )


_SINGLE_FILE_KEYS: dict[str, dict[str, Any]] = {
    "inpainting": {"inpainting": True, "types": ["inpaint"]},
    "inpainting_v2": {"inpainting": True, "types": ["inpaint"]},
    "xl_inpaint": {"inpainting": True, "types": ["inpaint"]},
    "xl_refiner": {"types": ["img2img"]},  # a refiner only refines
}


def single_file_defaults(location: Path) -> dict[str, Any]:
    """What a models-file entry of a checkpoint file need not say, read from its keys: an
    inpainting checkpoint serves inpaint jobs, a refiner img2img; and its base
    (``architecture``). Empty when the file cannot be read (the load explains)."""
    from easel.shared.classify import BASE_OF_ARCHITECTURE, checkpoint_architecture
    from easel.shared.weights_header import UnreadableWeights, read_header

    try:
        architecture, _ = checkpoint_architecture(read_header(location))
    except (UnreadableWeights, OSError):
        return {}
    base = BASE_OF_ARCHITECTURE.get(architecture or "")
    return {**_SINGLE_FILE_KEYS.get(architecture or "", {}), **({"architecture": base} if base else {})}


def _read_models_file(path: Path, settings: Settings) -> list[ModelSpec]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read models file {str(path)!r}: {exc}") from exc
    specs = []
    for name, entry in data.get("models", {}).items():
        entry = dict(entry)
        if entry.get("source") == ModelSource.TINY and not entry.get("location"):
            entry["location"] = str(settings.built_models_dir / name)
        try:
            if entry.get("source") == ModelSource.SINGLE_FILE and not entry.get("config"):
                entry = {**single_file_defaults(Path(entry.get("location") or "")), **entry}
            if entry.get("family") is None:
                entry["family"] = detect_family({**entry, "name": name}, offline=settings.offline)
            specs.append(ModelSpec(name=name, **entry))
        except (ValidationError, ValueError) as exc:
            raise ValueError(f"models file {str(path)!r}, model {name!r}: {exc}") from exc
    if not specs:
        raise ValueError(f"models file {str(path)!r} defines no [models.NAME] table")
    return specs
