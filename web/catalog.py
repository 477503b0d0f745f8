"""What the models folders hold, for clients: the found files, what fits each model, and
rescans on demand (docs/bring-your-models.md).

``GET /api/v1/catalog`` lists every file the workers found, servable or not (with the
reason), never a server path; ``GET /api/v1/upscalers`` the upscalers jobs may name;
``POST /api/v1/models/rescan`` asks every worker to rescan now and waits briefly for the
first answer. AUTOMATIC1111's listing and refresh calls
(``/sdapi/v1/loras``, ``sd-vae``, ``embeddings``, ``refresh-*``) answer from the same
catalog in A1111's shapes.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, Field

from easel.shared.catalog_store import CatalogRecord, read_catalog, request_rescan, wait_for_publish
from easel.shared.upscalers import BUILTIN_UPSCALERS, upscaler_names
from easel.web.a1111 import bp as a1111_bp
from easel.web.limits import api_limit, limiter
from easel.web.services import services

bp = Blueprint("catalog", __name__, url_prefix="/api/v1")
limiter.limit(api_limit)(bp)

RESCAN_WAIT_SECONDS = 5.0
"""How long a rescan call waits for a worker to publish (a short hold: not a bounded held call)."""


class CatalogFile(BaseModel):
    """One file a worker found in its models folders."""

    kind: str = Field(
        description="checkpoint, diffusers, lora, vae, embedding, controlnet, text_encoder or upscaler."
    )
    name: str = Field(description="The name jobs use: the path in its kind's folder, without suffix.")
    family: str | None = Field(description="sd, sdxl, sd3 or flux, read from the file; null if unknown.")
    architecture: str | None = Field(
        description='Within the family, as diffusers names it: "v1", "xl_base", ...'
    )
    format: str = Field(description="safetensors, pickle (.ckpt/.pt/.bin) or diffusers (a folder).")
    size_bytes: int
    fingerprint: str = Field(description="Identifies the content without reading the weights.")
    available: bool = Field(description="Whether it can be served; else ``reason`` says why.")
    reason: str | None
    workers: int = Field(description="How many workers published it.")
    details: dict[str, Any] = Field(description="What the header told (e.g. an embedding's vectors).")


class CatalogList(BaseModel):
    files: list[CatalogFile]


class Upscaler(BaseModel):
    name: str = Field(description="The name upscale jobs and a hires fix's upscaler take.")
    builtin: bool = Field(description="Built in (no weights), or a model file (models file or folder).")


class UpscalerList(BaseModel):
    upscalers: list[Upscaler]


class RescanResult(BaseModel):
    rescanned: bool = Field(description="Whether a worker published a rescan within a few seconds.")
    models: list[str] = Field(description="The models now known.")


def _file_view(record: CatalogRecord) -> CatalogFile:
    return CatalogFile(
        kind=record.kind,
        name=record.name,
        family=record.family,
        architecture=record.architecture,
        format=record.format,
        size_bytes=record.size_bytes,
        fingerprint=record.fingerprint,
        available=record.available,
        reason=record.reason,
        workers=len(record.workers),
        details=record.details,
    )


def _records() -> list[CatalogRecord]:
    with services().session() as session:
        return read_catalog(session)


@bp.get("/catalog")
def catalog() -> ResponseReturnValue:
    """Every file the workers found in their models folders, servable or not."""
    return jsonify(CatalogList(files=[_file_view(r) for r in _records()]).model_dump(mode="json"))


@bp.get("/upscalers")
def list_upscalers() -> ResponseReturnValue:
    """The upscalers jobs may name: the built-in ones first, then the models by name."""
    views = [
        Upscaler(name=name, builtin=name in BUILTIN_UPSCALERS) for name in upscaler_names(services().registry)
    ]
    return jsonify(UpscalerList(upscalers=views).model_dump(mode="json"))


def rescan(timeout: float = RESCAN_WAIT_SECONDS) -> bool:
    """Ask every worker to rescan; whether one published within ``timeout`` seconds. The
    registry is re-read at once when one did."""
    svc = services()
    with svc.session() as session:
        asked = request_rescan(session)
    answered = wait_for_publish(svc.session, asked, timeout)
    if answered:
        svc.catalog.refresh(force=True)
    return answered


@bp.post("/models/rescan")
def rescan_models() -> ResponseReturnValue:
    """Rescan the models folders now: 200 with the models once a worker answered, 202 when
    none did in time (the rescan still happens when a worker is up)."""
    answered = rescan()
    body = RescanResult(rescanned=answered, models=services().registry.names())
    return jsonify(body.model_dump(mode="json")), 200 if answered else 202


# -- AUTOMATIC1111 ------------------------------------------------------------------------


@a1111_bp.get("/loras")
def a1111_loras() -> ResponseReturnValue:
    """A1111's LoRA list: no server paths, the name stands for the file."""
    loras = services().registry.loras
    return jsonify([{"name": n, "alias": n, "path": n, "metadata": {}} for n in sorted(loras)])


@a1111_bp.get("/sd-vae")
def a1111_vaes() -> ResponseReturnValue:
    vaes = services().registry.vaes
    return jsonify([{"model_name": n, "filename": n} for n in sorted(vaes)])


@a1111_bp.get("/embeddings")
def a1111_embeddings() -> ResponseReturnValue:
    """A1111's embeddings: ``loaded`` (servable, with their vectors where the file told),
    ``skipped`` (found but unreadable or of no family Easel serves)."""
    registry = services().registry
    found = {r.name: r for r in _records() if r.kind == "embedding"}

    def view(name: str) -> dict[str, Any]:
        details = found[name].details if name in found else {}
        return {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
            "shape": details.get("dim"),
            "vectors": details.get("vectors"),
        }

    loaded = {name: view(name) for name in sorted(registry.embeddings)}
    skipped = {name: view(name) for name in sorted(found) if name not in registry.embeddings}
    return jsonify({"loaded": loaded, "skipped": skipped})


@a1111_bp.post("/refresh-checkpoints")
@a1111_bp.post("/refresh-loras")
@a1111_bp.post("/refresh-vae")
@a1111_bp.post("/refresh-embeddings")
def a1111_refresh() -> ResponseReturnValue:
    """A1111 rescans its folders and answers ``null``; so does Easel, once a worker rescanned
    (or after a short wait)."""
    rescan()
    return jsonify(None)
