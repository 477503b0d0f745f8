"""The OpenAI Images API under ``/v1``, so ``openai.OpenAI(base_url=".../v1")`` works.

``POST /v1/images/generations`` makes a txt2img job, ``POST /v1/images/edits`` an
inpaint job (an img2img job when nothing is transparent), ``GET /v1/models`` lists the
registry. Every call is an ordinary Easel job (``web.compat``), held until it finishes;
errors take OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
See docs/openai.md.
"""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Response, jsonify, request
from flask.typing import ResponseReturnValue
from PIL import Image
from werkzeug.datastructures import FileStorage

from easel.shared.errors import BadRequest, NotFound, ValidationFailed, field_detail
from easel.shared.images import encode_png_bytes, load_image
from easel.shared.models import Job
from easel.shared.registry import Registry
from easel.web.compat import (
    JOB_ID_HEADER,
    Outcome,
    compat_blueprint,
    outcome_error,
    output_b64,
    output_links,
    run_job,
    upload,
)
from easel.web.limits import accepted, limiter, submit_limit
from easel.web.services import services
from easel.web.submit import request_fields

# OpenAI's own model names: a client's default, served by Easel's default model.
OPENAI_MODEL_PREFIXES = ("dall-e", "gpt-image")
RESPONSE_FORMATS = ("b64_json", "url")
# Accepted and ignored: they tune OpenAI's models, not Easel's.
IGNORED = frozenset(
    {"quality", "style", "user", "moderation", "safety_identifier", "input_fidelity", "output_compression"}
)
# Easel's own knobs, through the SDK's extra_body.
EXTRAS = frozenset(
    {
        "negative_prompt",
        "seed",
        "steps",
        "guidance_scale",
        "scheduler",
        "strength",
        "mask_blur",
        "keep_unmasked",
        "priority",
        "webhook_url",
    }
)
# Easel's field names as OpenAI's parameters.
PARAMS = {
    "width": "size",
    "height": "size",
    "num_images": "n",
    "body": None,
    "jobs": None,
    "images": None,  # a quota (shared.usage)
    "gpu_seconds": None,
}
ERROR_TYPES = {401: "invalid_request_error", 429: "rate_limit_error"}
ERROR_CODES = {
    "unauthorized": "invalid_api_key",
    "validation_error": "invalid_value",
    "bad_request": "invalid_request",
    "rate_limited": "rate_limit_exceeded",
    "too_many_jobs": "rate_limit_exceeded",
    "quota_exceeded": "insufficient_quota",
}
_SIZE = re.compile(r"^\s*([0-9]{1,5})\s*x\s*([0-9]{1,5})\s*$", re.IGNORECASE | re.ASCII)  # no unicode digits


def _invalid(param: str, message: str, value: Any = None) -> ValidationFailed:
    return ValidationFailed(f"{param}: {message}", [field_detail(param, message, value)])


def parse_size(size: Any) -> tuple[int, int] | None:
    """``"WxH"`` -> ``(W, H)``; ``"auto"`` -> ``None`` (the model's default size)."""
    if isinstance(size, str) and size.strip().lower() == "auto":
        return None
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        raise _invalid("size", "must be WIDTHxHEIGHT, such as 512x512, or auto", size)
    return int(match.group(1)), int(match.group(2))


def easel_model(name: Any, registry: Registry) -> Any:
    """The Easel model for an OpenAI ``model``: OpenAI's own names (``dall-e-3``,
    ``gpt-image-1``, ...) mean the default model; any other name passes on (an unknown
    one is refused by the usual validation, naming the known models)."""
    if (
        isinstance(name, str)
        and name not in registry.names()
        and name.lower().startswith(OPENAI_MODEL_PREFIXES)
    ):
        return None
    return name


def job_fields(body: dict[str, Any], registry: Registry) -> tuple[dict[str, Any], str]:
    """The Easel job fields of an OpenAI images request, and its ``response_format``.

    Raises ``ValidationFailed`` naming the OpenAI parameter for what Easel cannot do.
    """
    body = {key: value for key, value in body.items() if value is not None}
    fields: dict[str, Any] = {}
    if "prompt" in body:
        fields["prompt"] = body.pop("prompt")
    if "model" in body and (model := easel_model(body.pop("model"), registry)) is not None:
        fields["model"] = model
    if "n" in body:
        n = body.pop("n")
        if isinstance(n, bool) or not isinstance(n, int):  # true is not 1
            raise _invalid("n", "must be an integer", n)
        fields["num_images"] = n
    if "size" in body and (size := parse_size(body.pop("size"))) is not None:
        fields["width"], fields["height"] = size
    response_format = body.pop("response_format", "b64_json")
    if response_format not in RESPONSE_FORMATS:
        raise _invalid("response_format", "must be b64_json or url", response_format)
    _refuse_unsupported(body)
    for name in EXTRAS & body.keys():
        fields[name] = body.pop(name)
    for name in IGNORED & body.keys():
        body.pop(name)
    if body:
        name = sorted(body)[0]
        raise _invalid(name, "is not a parameter Easel supports (Unrecognized request argument)", name)
    return fields, response_format


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """OpenAI features Easel does not have, refused rather than silently dropped."""
    if body.pop("stream", False) not in (False, "false"):
        raise _invalid("stream", "streaming is not supported; omit stream", True)
    if (partial := body.pop("partial_images", 0)) not in (0, "0"):
        raise _invalid("partial_images", "partial images are not supported", partial)
    if (fmt := body.pop("output_format", "png")) != "png":
        raise _invalid("output_format", "Easel returns PNG only", fmt)
    if (background := body.pop("background", "auto")) not in ("auto", "opaque"):
        raise _invalid("background", "transparent backgrounds are not supported", background)


def edit_mask(mask: Image.Image) -> Image.Image:
    """OpenAI's mask (fully transparent pixels are edited) as Easel's (white repaints,
    black keeps). A mask without an alpha channel is refused."""
    if not mask.has_transparency_data:
        raise _invalid(
            "mask", "must be a PNG with an alpha channel; its fully transparent pixels mark what to edit"
        )
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda value: 255 if value == 0 else 0)


def transparent_area(image: Image.Image) -> Image.Image | None:
    """The mask an image without one carries: its fully transparent pixels, if any."""
    if not image.has_transparency_data:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    return edit_mask(image) if alpha.getextrema()[0] == 0 else None


def openai_error(status: int, error: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """An Easel error object as OpenAI's error (status, body)."""
    details = error.get("details") or []
    field = details[0].get("field") if details and isinstance(details[0], dict) else None
    param = PARAMS.get(field, field) if field else None
    if status in (415, 422):
        status = 400
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = ERROR_CODES.get(error.get("code", ""), error.get("code"))
    return status, {
        "error": {"message": error.get("message", ""), "type": kind, "param": param, "code": code}
    }


bp = compat_blueprint("openai", __name__, "/v1", openai_error)


def images_response(outcome: Outcome, response_format: str) -> Response:
    """OpenAI's ``ImagesResponse`` for a finished job, or the error it ended with."""
    error = outcome_error(outcome)
    if error is not None:
        raise error
    job: Job = outcome.job
    if response_format == "url":
        data = [{"url": link, "revised_prompt": None} for link in output_links(job)]
    else:
        data = [{"b64_json": encoded, "revised_prompt": None} for encoded in output_b64(job)]
    response = jsonify(
        {
            "created": int(job.created_at.timestamp()),
            "data": data,
            "output_format": "png",
            "size": f"{job.width}x{job.height}",
            "easel_job_id": job.id,
        }
    )
    response.headers[JOB_ID_HEADER] = job.id
    return response


@bp.post("/images/generations")
@limiter.limit(submit_limit, deduct_when=accepted)
def generations() -> ResponseReturnValue:
    fields, response_format = job_fields(request_fields(request), services().registry)
    return images_response(run_job({**fields, "type": "txt2img"}), response_format)


@bp.post("/images/edits")
@limiter.limit(submit_limit, deduct_when=accepted)
def edits() -> ResponseReturnValue:
    svc = services()
    if request.mimetype != "multipart/form-data":
        raise BadRequest(
            "images/edits takes multipart/form-data with the image file",
            [field_detail("image", "send multipart/form-data", request.mimetype or None)],
        )
    fields, response_format = job_fields(request_fields(request), svc.registry)
    image_file = _one_image(request.files.getlist("image") + request.files.getlist("image[]"))
    limits = (svc.settings.max_image_bytes, svc.settings.max_image_pixels)
    image_bytes = image_file.read()
    mask_file = request.files.get("mask")
    if mask_file is not None and mask_file.filename:
        mask: Image.Image | None = edit_mask(load_image("mask", mask_file.read(), *limits))
    else:
        mask = transparent_area(load_image("image", image_bytes, *limits))
    files = {"image": upload("image", image_bytes)}
    if mask is not None:
        files["mask"] = upload("mask", encode_png_bytes(mask))
    kind = "inpaint" if mask is not None else "img2img"
    return images_response(run_job({**fields, "type": kind}, files), response_format)


def _one_image(files: list[FileStorage]) -> FileStorage:
    files = [f for f in files if f.filename]
    if not files:
        raise _invalid("image", "is required: the image to edit, as a multipart file")
    if len(files) > 1:
        raise _invalid("image", f"Easel edits one image per call; got {len(files)}", len(files))
    return files[0]


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "easel"}


@bp.get("/models")
def models() -> ResponseReturnValue:
    created = int(time.time())
    return jsonify(
        {"object": "list", "data": [_model(name, created) for name in services().registry.names()]}
    )


@bp.get("/models/<path:name>")
def model(name: str) -> ResponseReturnValue:
    if name not in services().registry.names():
        raise NotFound(f"the model {name!r} does not exist", [field_detail("model", "not found", name)])
    return jsonify(_model(name, int(time.time())))


@bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str) -> ResponseReturnValue:
    """Other OpenAI endpoints (variations, chat, ...): 404 in OpenAI's shape."""
    raise NotFound(f"Easel does not serve /v1/{rest}; it serves images/generations and images/edits")
