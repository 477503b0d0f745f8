"""The OpenAPI 3.1 document, its schemas generated from the pydantic models."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from pydantic.json_schema import models_json_schema

from easel.shared.kinds import INPUT_NAMES, KIND_NAMES, KINDS, Kind, SizeRule
from easel.shared.models import JobStatus
from easel.shared.schemas import ErrorResponse, JobCreate, JobList, JobView, ModelList

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed body",
        404: "Not found",
        409: "Conflict: already finished, or Idempotency-Key reused for other fields",
        410: "Gone: deleted by retention (EASEL_RETENTION_*)",
        413: "Body too large",
        415: "Unsupported content type",
        422: "Invalid field values",
        503: "Dependency unavailable",
    }
    return {str(s): _json("ErrorResponse", text[s]) for s in statuses}


def _with_common_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Every API operation may answer 401 (no or bad key), 429 (limits) and 503
    (database or storage unavailable); health routes are public."""
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
                operation["responses"].setdefault(
                    "401", _json("ErrorResponse", "Missing, unknown or revoked API key")
                )
                operation["responses"].setdefault(
                    "429", _json("ErrorResponse", "Rate limit, queued-jobs cap or daily quota")
                )
                operation["responses"].setdefault("503", _json("ErrorResponse", "Dependency unavailable"))
            else:
                operation["security"] = []
    return document


def job_example(kind: Kind) -> dict[str, Any]:
    """An example request of ``kind``: its inputs as placeholders, its knobs' defaults and
    the general fields it takes."""
    general = {"prompt": "a lighthouse at dusk, oil painting", "width": 256, "height": 256, "steps": 20}
    value: dict[str, Any] = {"type": kind.value}
    sized = kind.size is SizeRule.MODEL  # else the size comes from the input image
    value.update(
        {
            k: v
            for k, v in general.items()
            if k not in kind.refuses and (sized or k not in ("width", "height"))
        }
    )
    value.update({name: f"<base64 {name}: PNG, JPEG or WebP>" for name in kind.inputs})
    value.update(kind.knobs, seed=42)
    return {"summary": f"{kind.value}: {kind.summary}", "value": value}


JOB_EXAMPLES = {kind.value: job_example(kind) for kind in KINDS.values()}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole document; schemas come from ``shared.schemas``."""
    from easel.web.catalog import CatalogList, RescanResult, UpscalerList
    from easel.web.usage import UsageReport

    _, defs = models_json_schema(
        [
            (JobCreate, "validation"),
            (JobView, "serialization"),
            (JobList, "serialization"),
            (ModelList, "serialization"),
            (CatalogList, "serialization"),
            (RescanResult, "serialization"),
            (UpscalerList, "serialization"),
            (UsageReport, "serialization"),
            (ErrorResponse, "serialization"),
        ],
        ref_template=REF,
    )
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    form_schema = {**_ref("JobCreate")}
    return _with_common_errors(
        {
            "openapi": "3.1.0",
            "info": {"title": "Easel", "version": "1", "description": "Asynchronous image-generation jobs."},
            "paths": {
                "/api/v1/jobs": {
                    "post": {
                        "operationId": "createJob",
                        "summary": "Submit a job",
                        "parameters": [
                            {
                                "name": "Idempotency-Key",
                                "in": "header",
                                "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                                "description": "A retried POST with the same key returns the first job.",
                            }
                        ],
                        "requestBody": {
                            "required": True,
                            "content": {
                                "application/json": {"schema": _ref("JobCreate"), "examples": JOB_EXAMPLES},
                                "multipart/form-data": {"schema": form_schema},
                            },
                        },
                        "responses": {
                            "202": {
                                **_json("JobView", "Accepted; poll Location"),
                                "headers": {"Location": {"schema": {"type": "string"}}},
                            },
                            **_errors(400, 409, 413, 415, 422),
                        },
                    },
                    "get": {
                        "operationId": "listJobs",
                        "summary": "Jobs, newest first, with cursor pagination",
                        "parameters": [
                            {
                                "name": "status",
                                "in": "query",
                                "schema": {"type": "string", "enum": [s.value for s in JobStatus]},
                            },
                            {
                                "name": "type",
                                "in": "query",
                                "schema": {"type": "string", "enum": list(KIND_NAMES)},
                            },
                            {
                                "name": "limit",
                                "in": "query",
                                "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                            },
                            {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        ],
                        "responses": {"200": _json("JobList", "A page of jobs"), **_errors(422)},
                    },
                },
                "/api/v1/jobs/{job_id}/cancel": {
                    "post": {
                        "operationId": "cancelJob",
                        "summary": "Cancel a queued job, or stop a running one at its next step",
                        "parameters": [job_id],
                        "responses": {"200": _json("JobView", "The job"), **_errors(404, 409)},
                    }
                },
                "/api/v1/jobs/{job_id}": {
                    "get": {
                        "operationId": "getJob",
                        "summary": "A job",
                        "parameters": [job_id],
                        "responses": {"200": _json("JobView", "The job"), **_errors(404)},
                    }
                },
                "/api/v1/jobs/{job_id}/outputs/{index}": {
                    "get": {
                        "operationId": "getOutput",
                        "summary": "An output image",
                        "parameters": [
                            job_id,
                            {
                                "name": "index",
                                "in": "path",
                                "required": True,
                                "schema": {"type": "integer", "minimum": 0},
                            },
                        ],
                        "responses": {
                            "200": {
                                "description": "The image",
                                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                            },
                            "302": {"description": "Redirect to a short-lived presigned URL"},
                            **_errors(404, 410),
                        },
                    }
                },
                "/api/v1/jobs/{job_id}/inputs/{name}": {
                    "get": {
                        "operationId": "getInput",
                        "summary": "A stored input: image or mask (img2img, inpaint), or control image",
                        "parameters": [
                            job_id,
                            {
                                "name": "name",
                                "in": "path",
                                "required": True,
                                "schema": {"type": "string", "enum": list(INPUT_NAMES)},
                            },
                        ],
                        "responses": {
                            "200": {
                                "description": "The PNG",
                                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                            },
                            "302": {"description": "Redirect to a short-lived presigned URL"},
                            **_errors(404, 410),
                        },
                    }
                },
                "/api/v1/jobs/{job_id}/preview": {
                    "get": {
                        "operationId": "getPreview",
                        "summary": "The live preview of a running job's first image (overwritten in place)",
                        "description": "The job's event stream, GET /api/v1/jobs/{job_id}/events "
                        "(text/event-stream, docs/api.md), is not described here: OpenAPI has no "
                        "schema for a stream of events.",
                        "parameters": [job_id],
                        "responses": {
                            "200": {
                                "description": "The JPEG",
                                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                            },
                            "302": {"description": "Redirect to a short-lived presigned URL"},
                            **_errors(404),
                        },
                    }
                },
                "/api/v1/models": {
                    "get": {
                        "operationId": "listModels",
                        "summary": "Models, their limits and the live workers serving each",
                        "responses": {"200": _json("ModelList", "The models")},
                    }
                },
                "/api/v1/catalog": {
                    "get": {
                        "operationId": "listCatalog",
                        "summary": "Every file the workers found in their models folders",
                        "responses": {"200": _json("CatalogList", "The files, servable or not")},
                    }
                },
                "/api/v1/upscalers": {
                    "get": {
                        "operationId": "listUpscalers",
                        "summary": "The upscalers upscale jobs, a hires fix and an SD upscale may name",
                        "responses": {"200": _json("UpscalerList", "Built-in first, then by name")},
                    }
                },
                "/api/v1/models/rescan": {
                    "post": {
                        "operationId": "rescanModels",
                        "summary": "Ask every worker to rescan its models folders now",
                        "responses": {
                            "200": _json("RescanResult", "A worker rescanned"),
                            "202": _json("RescanResult", "No worker answered within a few seconds"),
                        },
                    }
                },
                "/api/v1/usage": {
                    "get": {
                        "operationId": "getUsage",
                        "summary": "Jobs, images and GPU-seconds per UTC day (admins: any key, or all)",
                        "parameters": [
                            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                            for name in ("from", "to", "key")
                        ],
                        "responses": {
                            "200": _json("UsageReport", "The usage"),
                            "403": _json("ErrorResponse", "Another key's usage, asked by a non-admin key"),
                            **_errors(422),
                        },
                    }
                },
                "/healthz": {
                    "get": {
                        "operationId": "healthz",
                        "summary": "Alive",
                        "responses": {"200": {"description": "Alive"}},
                    }
                },
                "/readyz": {
                    "get": {
                        "operationId": "readyz",
                        "summary": "Database, broker and storage reachable",
                        "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}},
                    }
                },
            },
            "components": {
                "schemas": defs["$defs"],
                "securitySchemes": {
                    "apiKey": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "An API key from `easel keys create`.",
                    }
                },
            },
            "security": [{"apiKey": []}],
        }
    )


@bp.get("/api/v1/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return jsonify(openapi_document())
