"""The registry with the catalog's files in it: found checkpoints become models, found
LoRAs, ControlNets, VAEs and embeddings become adapters, found upscaler models upscalers
(docs/bring-your-models.md, docs/models.md#upscalers).

Names from the models file (or the built-ins) win over found ones, for every kind; a
found upscaler named like a built-in one (``lanczos``) is left out. A found file that
cannot be served (unavailable, a family or architecture Easel does not serve from a
single file) is left out of the registry, and stays listed with its reason in the
catalog. On a worker the specs point at the files (``location``); on the web tier, which
has no files, the models are ``source = "catalog"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from easel.shared.adapters import AdapterSpec, ControlNetSpec, EmbeddingSpec, LoraSpec, VaeSpec
from easel.shared.catalog_store import CatalogRecord
from easel.shared.families import get_family
from easel.shared.models import JobType
from easel.shared.registry import ModelSource, ModelSpec, Registry
from easel.shared.upscalers import BUILTIN_UPSCALERS, UpscalerSpec

log = logging.getLogger(__name__)

ON_WORKERS = "(a file in a worker's models folder)"
"""The location the web tier records for a found adapter or upscaler: only workers know the path."""

INPAINTING_ARCHITECTURES = frozenset({"inpainting", "inpainting_v2", "xl_inpaint"})
"""diffusers' names (``details["architecture"]`` of a checkpoint) of inpainting checkpoints."""
_ARCHITECTURE_KEYS: dict[str, dict[str, Any]] = {
    "v2": {"default_size": 768},  # SD 2.x 768 (v-prediction), as diffusers reads "v2"
    "inpainting_v2": {"default_size": 512},
    "xl_refiner": {"types": (JobType.IMG2IMG,)},  # a refiner only refines
}
_ADAPTER_KINDS: dict[str, type[AdapterSpec]] = {
    "lora": LoraSpec,
    "controlnet": ControlNetSpec,
    "vae": VaeSpec,
    "embedding": EmbeddingSpec,
}
MODEL_KINDS = frozenset({"checkpoint", "diffusers"})


def model_spec(record: CatalogRecord) -> ModelSpec:
    """The model a found checkpoint or diffusers folder serves; ``ValueError`` (from its
    validation) when Easel cannot serve it."""
    if record.family is None:
        raise ValueError(f"model {record.name!r}: its family could not be read from the file")
    family = get_family(record.family)
    architecture = str(record.details.get("architecture") or "")  # diffusers' name: "v1", "xl_refiner"
    if record.kind == "checkpoint" and family.single_file_pipeline is None:
        raise ValueError(
            f"model {record.name!r}: single-file checkpoints of the {family.describe()} family are not "
            "supported; use a diffusers folder (docs/bring-your-models.md)"
        )
    if record.location is None:
        source = ModelSource.CATALOG
    elif record.kind == "diffusers":
        source = ModelSource.DIRECTORY
    else:
        source = ModelSource.SINGLE_FILE
    entry: dict[str, Any] = {
        "name": record.name,
        "source": source,
        "location": record.location or "",
        "family": record.family,
        "architecture": record.architecture,
        **_ARCHITECTURE_KEYS.get(architecture, {}),
    }
    if architecture in INPAINTING_ARCHITECTURES:
        entry.update(inpainting=True, types=(JobType.INPAINT,))
    return ModelSpec(**entry)


def adapter_spec(record: CatalogRecord) -> AdapterSpec:
    """The adapter a found LoRA, ControlNet, VAE or embedding file is (fits by family and
    architecture); ``ValueError`` when it fits nothing Easel knows."""
    if record.family is None and len(record.details.get("families") or ()) < 2:
        raise ValueError(f"{record.kind} {record.name!r}: its base family could not be read from the file")
    cls = _ADAPTER_KINDS[record.kind]
    families = tuple(record.details.get("families") or ())
    fields: dict[str, Any] = {
        "name": record.name,
        "location": record.location or ON_WORKERS,
        "architecture": record.architecture,
        **({"families": families} if len(families) > 1 else {"family": record.family}),
    }
    return cls(**fields)


def upscaler_spec(record: CatalogRecord) -> UpscalerSpec:
    """The upscaler a found upscaler model file is (it fits every model); ``ValueError``
    when its name is a built-in upscaler's."""
    if record.name in BUILTIN_UPSCALERS:
        raise ValueError(f"upscaler {record.name!r}: the name of a built-in upscaler; rename the file")
    return UpscalerSpec(name=record.name, location=record.location or ON_WORKERS)


def with_catalog(base: Registry, records: Iterable[CatalogRecord]) -> tuple[Registry, list[str]]:
    """``base`` plus the servable files of ``records``, and why each other file is left out."""
    specs = {spec.name: spec for spec in base}
    tables: dict[str, dict[str, Any]] = {
        "lora": dict(base.loras),
        "controlnet": dict(base.controlnets),
        "vae": dict(base.vaes),
        "embedding": dict(base.embeddings),
    }
    upscalers = dict(base.upscalers)
    skipped: list[str] = []
    for record in records:
        if not record.available:
            skipped.append(f"{record.kind} {record.name!r}: {record.reason or 'unavailable'}")
            continue
        try:
            if record.kind in MODEL_KINDS:
                if record.name not in specs:  # the models file's own entry wins
                    specs[record.name] = model_spec(record)
            elif record.kind in tables:
                tables[record.kind].setdefault(record.name, adapter_spec(record))
            elif record.kind == "upscaler" and record.name not in upscalers:  # the models file's wins
                upscalers[record.name] = upscaler_spec(record)
        except (ValidationError, ValueError) as exc:
            skipped.append(_reason(exc))
    registry = Registry(
        list(specs.values()),
        base.requested_default,
        tables["lora"],
        tables["controlnet"],
        tables["vae"],
        tables["embedding"],
        strict=False,
        upscalers=upscalers,
    )
    return registry, skipped


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
    return str(exc)


ADAPTER_KINDS = ("loras", "controlnets", "vaes", "embeddings")


def fitting_adapters(registry: Registry, spec: ModelSpec) -> dict[str, list[str]]:
    """For each adapter kind, the names that fit model ``spec`` (family, architecture, or
    the models a models-file entry lists)."""

    def fits(adapter: AdapterSpec) -> bool:
        return adapter.fits(spec.name, spec.family.value, spec.architecture)

    tables: dict[str, dict[str, Any]] = {
        "loras": registry.loras,
        "controlnets": registry.controlnets,
        "vaes": registry.vaes,
        "embeddings": registry.embeddings,
    }
    return {
        kind: sorted(name for name, adapter in tables[kind].items() if fits(adapter))
        for kind in ADAPTER_KINDS
    }
