"""Request and response models: one set for JSON, multipart and HTML forms.

The OpenAPI document is generated from these classes (``web/openapi.py``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from PIL import Image
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, field_validator

from easel.shared.adapters import (
    ControlRef,
    ControlRequest,
    LoraRef,
    adapter_details,
    canonical_loras,
    lift_prompt_tags,
)
from easel.shared.errors import ValidationFailed, field_detail
from easel.shared.families import ALL_SCHEDULERS
from easel.shared.hires import LATENT, HiresRef, HiresRequest, lift_hires_fields, target_size
from easel.shared.images import default_size
from easel.shared.kinds import (
    KIND_INPUTS,
    KIND_KNOBS,
    KINDS,
    TYPE_DESCRIPTION,
    Engine,
    SizeRule,
    kind_of,
    kinds_with,
    names,
)
from easel.shared.models import JobType
from easel.shared.netsafety import UnsafeUrl, check_public_url, check_url_shape
from easel.shared.params import MAX_SEED, PARAM_FIELDS, GenerationParams, bounds, knob
from easel.shared.registry import ModelSpec, Registry
from easel.shared.sd_upscale import SdUpscaleRef, SdUpscaleRequest, lift_sd_upscale_fields
from easel.shared.settings import Settings
from easel.shared.upscalers import MAX_UPSCALED_SIDE, scaled_size, upscaler_names

MAX_PRIORITY = 1000  # admin keys; others are capped by EASEL_MAX_PRIORITY
WebhookEvent = Literal["start", "progress", "completed"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("start", "progress", "completed")
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed",)


class JobCreate(BaseModel):
    """What a client may send to create a job. Unset knobs take the model's defaults."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "type": "txt2img",
                    "prompt": "a lighthouse at dusk",
                    "width": 256,
                    "height": 256,
                    "steps": 20,
                    "seed": 42,
                }
            ]
        },
    )

    type: JobType = Field(JobType.TXT2IMG, description=TYPE_DESCRIPTION)
    model: str | None = knob("model")
    prompt: str | None = Field(None, min_length=1, description="What to draw (every kind but upscale).")
    negative_prompt: str = Field("", description="What to steer away from.")
    width: int | None = knob("width")
    height: int | None = knob("height")
    steps: int | None = knob("steps")
    guidance_scale: float | None = knob("guidance_scale")
    scheduler: str | None = knob(
        "scheduler", f"One of the model's schedulers (GET /api/v1/models): {', '.join(ALL_SCHEDULERS)}."
    )
    seed: int | None = knob("seed")
    num_images: int = Field(1, description="Images; seeds are seed, seed+1, ...", **bounds("num_images"))
    strength: float | None = knob("strength")
    image: str | None = Field(None, description="img2img / inpaint: PNG, JPEG or WebP, base64 (JSON only).")
    mask: str | None = Field(None, description="inpaint: white repaints, black keeps; base64 (JSON only).")
    mask_blur: int | None = knob("mask_blur")
    keep_unmasked: bool | None = knob("keep_unmasked")
    loras: list[LoraRef] | None = Field(
        None,
        description="LoRA adapters: [{name, weight}] (weight -2..2, default 1); <lora:name:weight> tags "
        "in the prompt are moved here. Multipart: JSON or name:weight,name.",
    )
    control: ControlRequest | None = Field(
        None,
        description="ControlNet: {model, image (base64), scale (0..2, default 1)}. Multipart: "
        "control_model, control_scale and a control_image file.",
    )
    upscaler: str | None = knob("upscaler")
    scale: float | None = knob("scale")
    hires: HiresRequest | None = Field(
        None,
        description="txt2img hires fix: {scale (default 2) or width/height, upscaler (latent or an "
        "upscaler's name; default latent), steps (default the job's), denoising_strength (default 0.7)}: "
        "drawn at width x height, upscaled, redrawn by img2img at the target size. Forms and "
        "multipart: hires_scale, hires_upscaler, ...",
    )
    sd_upscale: SdUpscaleRequest | None = Field(
        None,
        description="img2img SD upscale: {upscaler (lanczos or an upscaler's name; default lanczos), "
        "scale (above 1, at most 4; default 2), overlap (pixels, 0..256; default 64)}: the input "
        "upscaled by scale, redrawn by img2img in tiles of width x height (default the model's size) "
        "blended in their overlaps; the output is the input's size times scale. Forms and "
        "multipart: sd_upscale_upscaler, sd_upscale_scale, sd_upscale_overlap.",
    )
    tiling: bool | None = knob("tiling")
    vae: str | None = knob(
        "vae",
        "A VAE of the registry (GET /api/v1/models) to decode with instead of the model's own; "
        "absent: the model's own.",
    )
    webhook_url: AnyHttpUrl | None = Field(
        None, description="POSTed the job object, signed, when the job finishes (http or https)."
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None,
        description="Which webhooks to send: start (the job starts running), progress (at most every "
        "EASEL_WEBHOOK_PROGRESS_SECONDS), completed (it finished). Default: completed only.",
    )
    priority: int = Field(
        0,
        ge=0,
        le=MAX_PRIORITY,
        description="Higher runs first; above EASEL_MAX_PRIORITY (default 10) needs an admin key.",
    )

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _events_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # multipart and forms: "start,completed"
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_events")
    @classmethod
    def _some_events(cls, value: list[WebhookEvent] | None) -> list[WebhookEvent] | None:
        if value is not None and not value:
            raise ValueError(f"must name at least one of {', '.join(WEBHOOK_EVENTS)}")
        return None if value is None else [e for e in WEBHOOK_EVENTS if e in value]  # once each, in order

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        """The URL as sent (parsing would turn ``http:///x`` into ``http://x/``): a host, a
        port that is not 0, no credentials."""
        if isinstance(value, str):
            check_url_shape(value.strip())
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_only(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if value is not None and len(str(value)) > 2048:
            raise ValueError("must be at most 2048 characters")
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is not None and value not in ALL_SCHEDULERS:
            raise ValueError(f"must be one of {', '.join(ALL_SCHEDULERS)}")
        return value


class ResolvedJob(GenerationParams):
    """A validated request with every default filled in: what the job row records."""

    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    priority: int = 0

    @property
    def params(self) -> GenerationParams:
        """The generation parameters alone."""
        return GenerationParams.model_validate(self.model_dump(include=set(PARAM_FIELDS)))


@dataclass
class JobInputs:
    """Decoded uploads: the image of img2img / inpaint and the mask of inpaint."""

    image: Image.Image | None = None
    mask: Image.Image | None = None
    control: Image.Image | None = None  # the ControlNet's image, RGB


def parse_job_request(data: dict[str, Any]) -> JobCreate:
    """Validate raw fields; raise ``ValidationFailed`` naming every bad field and value."""
    data = lift_sd_upscale_fields(lift_hires_fields(lift_prompt_tags(data)))
    missing = _missing_prompt(data)
    try:
        request = JobCreate.model_validate(data)
    except ValidationError as exc:
        details = missing + _details(exc)
        raise ValidationFailed(_summary(details), details) from None
    if missing:
        raise ValidationFailed(_summary(missing), missing)
    return request


def _missing_prompt(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``prompt: is required`` where the kind asked for takes a prompt and none was sent."""
    try:
        kind = kind_of(data.get("type") or JobType.TXT2IMG)
    except (ValueError, TypeError):
        return []  # the type's own error says so
    return [field_detail("prompt", "is required")] if kind.takes_prompt and data.get("prompt") is None else []


def resolve_job(
    request: JobCreate,
    registry: Registry,
    settings: Settings,
    inputs: JobInputs | None = None,
    admin: bool = False,
) -> ResolvedJob:
    """Apply the model's defaults and limits; raise ``ValidationFailed`` on any breach.

    ``admin`` callers may ask for any priority up to ``MAX_PRIORITY``; others up to
    ``settings.max_priority``.
    """
    inputs = inputs or JobInputs()
    details: list[dict[str, Any]] = []
    if not admin and request.priority > settings.max_priority:
        details.append(
            field_detail(
                "priority",
                f"{request.priority} exceeds {settings.max_priority}, the most a non-admin key may ask "
                f"for (EASEL_MAX_PRIORITY)",
                request.priority,
            )
        )
    try:
        spec = registry.get(request.model)
    except ValueError as exc:
        details.append(field_detail("model", str(exc), request.model))
        raise ValidationFailed(_summary(details), details) from None
    if kind_of(request.type).engine is Engine.DIFFUSERS and request.type not in spec.types:
        served = ", ".join(t.value for t in spec.types)
        details.append(
            field_detail(
                "type",
                f"model {spec.name!r} does not serve {request.type.value!r} jobs (it serves: {served})",
                request.type.value,
            )
        )
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name) or ""
        if len(text) > settings.max_prompt_chars:
            message = f"is {len(text)} characters; at most {settings.max_prompt_chars} are allowed"
            details.append(field_detail(name, message, text))
    for name in ("width", "height"):
        value = getattr(request, name)
        if value is not None and not spec.min_size <= value <= spec.max_size:
            details.append(
                field_detail(
                    name,
                    f"{value} is outside model {spec.name!r}'s range {spec.min_size}..{spec.max_size}",
                    value,
                )
            )
    for name, most in (("steps", spec.max_steps), ("num_images", spec.max_num_images)):
        value = getattr(request, name)
        if value is not None and value > most:
            details.append(
                field_detail(name, f"{value} exceeds model {spec.name!r}'s maximum of {most}", value)
            )
    details += _check_family(request, spec)
    details += _check_inputs(request, inputs)
    details += _check_upscale(request, registry, inputs)
    details += _check_hires(request, spec, registry)
    details += _check_sd_upscale(request, spec, registry, inputs)
    if request.webhook_url is not None and settings.webhook_secret is not None:
        try:
            check_public_url(str(request.webhook_url), settings.webhook_allow_private)
        except UnsafeUrl as exc:
            details.append(field_detail("webhook_url", str(exc), str(request.webhook_url)))
    if request.webhook_events is not None and request.webhook_url is None:
        details.append(
            field_detail("webhook_events", "applies only with a webhook_url", request.webhook_events)
        )
    if request.webhook_url is not None and settings.webhook_secret is None:
        details.append(
            field_detail(
                "webhook_url",
                "webhooks are disabled on this server (EASEL_WEBHOOK_SECRET is not set)",
                str(request.webhook_url),
            )
        )
    seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
    if seed + request.num_images - 1 > MAX_SEED:
        details.append(
            field_detail("seed", f"{seed} + num_images - 1 exceeds the largest seed {MAX_SEED}", seed)
        )
    details += [
        field_detail(name, message, value)
        for name, message, value in adapter_details(
            model=spec.name,
            family=str(getattr(spec, "family", "sd")),
            prompt=request.prompt or "",
            negative_prompt=request.negative_prompt,
            loras=request.loras or [],
            control=request.control,
            control_image=inputs.control is not None,
            known_loras=registry.loras,
            known_controlnets=registry.controlnets,
            max_loras=settings.max_loras_per_job,
            vae=request.vae,
            known_vaes=registry.vaes,
            known_embeddings=registry.embeddings,
            architecture=getattr(spec, "architecture", None),
        )
    ]
    if details:
        raise ValidationFailed(_summary(details), details)
    resolved = _with_defaults(request, spec, seed, inputs)
    if resolved.denoising_steps < 1:
        message = (
            f"{resolved.strength} with {resolved.steps} steps leaves no denoising step; "
            f"raise strength or steps"
        )
        raise ValidationFailed(f"strength: {message}", [field_detail("strength", message, resolved.strength)])
    return resolved


def _check_family(request: JobCreate, spec: ModelSpec) -> list[dict[str, Any]]:
    """The fields the model's family constrains: scheduler, size multiple, negative prompt."""
    details = []
    family = spec.family_info
    where = f"model {spec.name!r} ({family.describe()})"
    if request.scheduler is not None and request.scheduler not in family.schedulers:
        details.append(
            field_detail(
                "scheduler",
                f"{request.scheduler!r} is not a scheduler of {where}; "
                f"it offers {', '.join(family.schedulers)}",
                request.scheduler,
            )
        )
    for name in ("width", "height"):
        value = getattr(request, name)
        if value is not None and value % family.size_multiple:
            details.append(
                field_detail(
                    name, f"{value} is not a multiple of {family.size_multiple}, as {where} needs", value
                )
            )
    if request.negative_prompt and not family.negative_prompt:
        details.append(
            field_detail(
                "negative_prompt",
                f"{where} is guidance-distilled: guidance_scale is its distilled guidance and it takes "
                f"no negative prompt",
                request.negative_prompt,
            )
        )
    return details


def _check_inputs(request: JobCreate, inputs: JobInputs) -> list[dict[str, Any]]:
    """The fields the job's kind decides: its inputs (required or refused), its knobs and
    the general fields it refuses."""
    details = []
    kind = kind_of(request.type)
    if kind.takes_prompt and request.prompt is None:
        details.append(field_detail("prompt", "is required"))
    for name in kind.refuses:
        value = getattr(request, name)
        if name in request.model_fields_set and value not in (None, "", []) and value != kind.fixed.get(name):
            details.append(field_detail(name, f"applies only to {names(kinds_with(name))} jobs", value))
    for name in KIND_KNOBS:
        value = getattr(request, name)
        if value is not None and name not in kind.knobs:
            details.append(field_detail(name, f"applies only to {names(kinds_with(name))} jobs", value))
    for name in KIND_INPUTS:
        given = getattr(inputs, name) is not None
        if name in kind.inputs and not given:
            details.append(field_detail(name, f"is required for {kind.value} jobs"))
        elif given and name not in kind.inputs:
            details.append(field_detail(name, f"applies only to {names(kinds_with(name))} jobs"))
    if inputs.image is not None and inputs.mask is not None and inputs.mask.size != inputs.image.size:
        mask_size, image_size = "x".join(map(str, inputs.mask.size)), "x".join(map(str, inputs.image.size))
        details.append(
            field_detail("mask", f"is {mask_size} but the image is {image_size}; they must match", mask_size)
        )
    return details


def _check_upscale(request: JobCreate, registry: Registry, inputs: JobInputs) -> list[dict[str, Any]]:
    """A known upscaler, and an upscaled size within ``MAX_UPSCALED_SIDE``."""
    kind = kind_of(request.type)
    details = []
    if "upscaler" in kind.knobs and request.upscaler is not None:
        known = upscaler_names(registry)
        if request.upscaler not in known:
            message = f"unknown upscaler {request.upscaler!r}; known: {', '.join(known)}"
            details.append(field_detail("upscaler", message, request.upscaler))
    if kind.size is SizeRule.SCALED and inputs.image is not None:
        scale = request.scale if request.scale is not None else kind.knobs["scale"]
        size = scaled_size(*inputs.image.size, scale)
        if max(size) > MAX_UPSCALED_SIDE:
            message = f"makes {size[0]}x{size[1]}; sides of at most {MAX_UPSCALED_SIDE} are allowed"
            details.append(field_detail("scale", message, scale))
    return details


def _check_hires(request: JobCreate, spec: ModelSpec, registry: Registry) -> list[dict[str, Any]]:
    """A hires fix on a kind that has one, on a model that also serves img2img, without a
    ControlNet; a known upscaler; a target size and steps within the model's limits."""
    hires = request.hires
    if hires is None:
        return []
    kind = kind_of(request.type)
    value = hires.model_dump(exclude_none=True)
    if not kind.hires:
        with_hires = [k.value for k in KINDS.values() if k.hires]
        return [field_detail("hires", f"applies only to {names(with_hires)} jobs", value)]
    if JobType.IMG2IMG not in spec.types:
        return [
            field_detail("hires", f"model {spec.name!r} serves no img2img, which its second pass is", value)
        ]
    if request.control is not None:
        return [field_detail("hires", "does not combine with control (a ControlNet)", value)]
    details = []
    known = [LATENT, *upscaler_names(registry)]
    if hires.upscaler not in known:
        message = f"unknown upscaler {hires.upscaler!r}; known: {', '.join(known)}"
        details.append(field_detail("hires.upscaler", message, hires.upscaler))
    elif hires.upscaler == LATENT and spec.family_info.name == "flux":
        message = f"{LATENT!r} does not fit model {spec.name!r} (Flux packs its latents); name an upscaler"
        details.append(field_detail("hires.upscaler", message, hires.upscaler))
    multiple = spec.family_info.size_multiple
    width, height = request.width or spec.default_size, request.height or spec.default_size
    target = target_size(hires, width, height, multiple)
    sized = hires.width is not None or hires.height is not None  # else the scale (or its default) made it
    for name, side in zip(("width", "height"), target, strict=True):
        field = f"hires.{name}" if sized else "hires.scale"
        given = getattr(hires, name) if sized else hires.scale
        if not spec.min_size <= side <= spec.max_size:
            limits = f"model {spec.name!r}'s range {spec.min_size}..{spec.max_size}"
            details.append(field_detail(field, f"makes a {name} of {side}, outside {limits}", given))
        elif side % multiple:
            message = f"makes a {name} of {side}, not a multiple of {multiple} as model {spec.name!r} needs"
            details.append(field_detail(field, message, given))
    if hires.steps is not None and hires.steps > spec.max_steps:
        message = f"{hires.steps} exceeds model {spec.name!r}'s maximum of {spec.max_steps}"
        details.append(field_detail("hires.steps", message, hires.steps))
    steps = hires.steps or request.steps or spec.default_steps
    if min(int(steps * hires.denoising_strength), steps) < 1:
        message = f"{hires.denoising_strength} with {steps} steps leaves no denoising step; raise it or steps"
        details.append(field_detail("hires.denoising_strength", message, hires.denoising_strength))
    return details


def _check_sd_upscale(
    request: JobCreate, spec: ModelSpec, registry: Registry, inputs: JobInputs
) -> list[dict[str, Any]]:
    """An SD upscale on a kind that has one, without a ControlNet or seamless tiling; a
    known upscaler; an output within ``MAX_UPSCALED_SIDE``; tiles that fit the output and
    the model, and an overlap smaller than the tile."""
    upscale = request.sd_upscale
    if upscale is None:
        return []
    kind = kind_of(request.type)
    value = upscale.model_dump()
    if not kind.sd_upscale:
        with_it = [k.value for k in KINDS.values() if k.sd_upscale]
        return [field_detail("sd_upscale", f"applies only to {names(with_it)} jobs", value)]
    if request.control is not None:
        return [field_detail("sd_upscale", "does not combine with control (a ControlNet)", value)]
    if request.tiling:
        return [field_detail("sd_upscale", "does not combine with tiling (seamless textures)", value)]
    details = []
    known = upscaler_names(registry)
    if upscale.upscaler not in known:
        message = f"unknown upscaler {upscale.upscaler!r}; known: {', '.join(known)}"
        details.append(field_detail("sd_upscale.upscaler", message, upscale.upscaler))
    if inputs.image is None:
        return details  # the missing image's own error says so
    tile, out = _sd_upscale_sizes(request, spec, inputs.image.size)
    if max(out) > MAX_UPSCALED_SIDE:
        message = f"makes {out[0]}x{out[1]}; sides of at most {MAX_UPSCALED_SIDE} are allowed"
        return [*details, field_detail("sd_upscale.scale", message, upscale.scale)]
    if min(tile) < spec.min_size:
        message = f"makes {out[0]}x{out[1]}, smaller than model {spec.name!r}'s least tile of {spec.min_size}"
        details.append(field_detail("sd_upscale.scale", message, upscale.scale))
    if upscale.overlap >= min(tile):
        message = f"{upscale.overlap} must be smaller than the tile ({tile[0]}x{tile[1]})"
        details.append(field_detail("sd_upscale.overlap", message, upscale.overlap))
    return details


def _sd_upscale_sizes(
    request: JobCreate, spec: ModelSpec, image_size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """An SD upscale's tile (the request's width and height, each absent one the model's
    default size; cut to the upscaled side, rounded down to the family's multiple, as A1111
    crops a tile larger than the image) and its output size (the input's times scale)."""
    assert request.sd_upscale is not None
    out = scaled_size(*image_size, request.sd_upscale.scale)
    multiple = spec.family_info.size_multiple

    def side(given: int | None, whole: int) -> int:
        return min(given if given is not None else spec.default_size, whole // multiple * multiple)

    return (side(request.width, out[0]), side(request.height, out[1])), out


def _sd_upscale_of(request: JobCreate, out: tuple[int, int]) -> SdUpscaleRef | None:
    """The job's resolved SD upscale (``_check_sd_upscale`` passed)."""
    if request.sd_upscale is None:
        return None
    return SdUpscaleRef(**request.sd_upscale.model_dump(), width=out[0], height=out[1])


def _hires_of(request: JobCreate, spec: ModelSpec, width: int, height: int, steps: int) -> HiresRef | None:
    """The job's resolved hires fix (``_check_hires`` passed): the target size of the first
    pass's ``width`` x ``height``, and the defaults filled in."""
    hires = request.hires
    if hires is None:
        return None
    target = target_size(hires, width, height, spec.family_info.size_multiple)
    return HiresRef(
        width=target[0],
        height=target[1],
        upscaler=hires.upscaler,
        steps=hires.steps or steps,
        denoising_strength=hires.denoising_strength,
    )


def _output_size(request: JobCreate, spec: ModelSpec, inputs: JobInputs) -> tuple[int, int]:
    """Explicit sizes win; otherwise the kind's rule: the model's default size, or the
    input image's size fitted to the model."""
    kind = kind_of(request.type)
    if request.sd_upscale is not None and inputs.image is not None:  # the tile's size
        return _sd_upscale_sizes(request, spec, inputs.image.size)[0]
    if kind.size is SizeRule.SCALED and inputs.image is not None:
        return scaled_size(*inputs.image.size, request.scale or kind.knobs["scale"])
    if kind.size is SizeRule.MODEL or inputs.image is None:
        return request.width or spec.default_size, request.height or spec.default_size
    width, height = default_size(
        *inputs.image.size, spec.min_size, spec.max_size, spec.family_info.size_multiple
    )
    if request.width and request.height:
        return request.width, request.height
    if request.width:  # keep the input's aspect for the side not given
        return request.width, _fit8(request.width * inputs.image.height / inputs.image.width, spec)
    if request.height:
        return _fit8(request.height * inputs.image.width / inputs.image.height, spec), request.height
    return width, height


def _fit8(side: float, spec: ModelSpec) -> int:
    """``side`` rounded down to the family's size multiple, within the model's limits."""
    multiple = spec.family_info.size_multiple
    return min(spec.max_size, max(spec.min_size, int(side) // multiple * multiple))


_AS_REQUESTED = {"type", "prompt", "negative_prompt", "num_images", "priority", "vae", "tiling"}
"""The fields a job keeps as its request gives them (``_with_defaults``)."""


def _with_defaults(request: JobCreate, spec: ModelSpec, seed: int, inputs: JobInputs) -> ResolvedJob:
    width, height = _output_size(request, spec, inputs)
    kind = kind_of(request.type)
    values = {
        **request.model_dump(include=_AS_REQUESTED),
        "prompt": request.prompt or "",
        "steps": request.steps or spec.default_steps,
        "guidance_scale": (
            request.guidance_scale if request.guidance_scale is not None else spec.default_guidance_scale
        ),
        **{  # the kind's knobs with their defaults; the others stay None
            name: getattr(request, name) if getattr(request, name) is not None else default
            for name, default in kind.knobs.items()
        },
        **kind.fixed,
    }
    return ResolvedJob(
        **values,
        model=spec.name,
        width=width,
        height=height,
        hires=_hires_of(request, spec, width, height, values["steps"]),
        sd_upscale=(
            _sd_upscale_of(request, _sd_upscale_sizes(request, spec, inputs.image.size)[1])
            if inputs.image is not None and request.sd_upscale is not None
            else None
        ),
        scheduler=request.scheduler or spec.default_scheduler,
        seed=seed,
        loras=tuple(LoraRef.model_validate(item) for item in canonical_loras(request.loras) or ()),
        control=(
            ControlRef(model=request.control.model, scale=request.control.scale) if request.control else None
        ),
        webhook_url=str(request.webhook_url) if request.webhook_url else None,
        webhook_events=(
            list(request.webhook_events or DEFAULT_WEBHOOK_EVENTS) if request.webhook_url else None
        ),
    )


def _details(exc: ValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"]) or "body"
        value = err.get("input")
        if err["type"] == "missing":
            message = "is required"
        elif err["type"] == "extra_forbidden":
            message = "is not a known field"
        else:
            message = err["msg"].removeprefix("Value error, ")
            message = message[0].lower() + message[1:] if message else message
        details.append(field_detail(field, message, None if err["type"] == "missing" else value))
    return details


def _summary(details: list[dict[str, Any]]) -> str:
    parts = []
    for d in details:
        text = f"{d['field']}: {d['message']}"
        if d["value"] is not None and repr(d["value"]) not in d["message"]:
            text += f" (got {d['value']!r})"
        parts.append(text)
    return "; ".join(parts)


# ---- responses ---------------------------------------------------------------------------


class Progress(BaseModel):
    step: int
    total: int
    fraction: float


class OutputInfo(BaseModel):
    index: int
    seed: int
    url: str
    width: int
    height: int
    content_type: str


class ErrorInfo(BaseModel):
    code: str
    message: str


class WebhookState(BaseModel):
    url: str
    events: list[WebhookEvent] = Field(description="The events delivered to the URL.")
    attempts: int
    delivered_at: datetime | None
    last_error: str | None


class PreviewInfo(BaseModel):
    """The latest live preview of a running job's first image."""

    url: str = Field(description="The preview image (JPEG); changes with each step recorded.")
    step: int = Field(description="The denoising step the preview shows.")


class JobView(BaseModel):
    """The job object of the REST contract."""

    id: str
    type: JobType
    model: str
    status: str
    params: dict[str, Any]
    progress: Progress
    queue_position: int | None
    eta_seconds: float | None = Field(
        description="Seconds until the job finishes; null once finished or while it waits for a worker."
    )
    waiting_for_worker: bool = Field(
        description="Queued, and no live worker serves its model: it waits until one starts."
    )
    outputs: list[OutputInfo]
    preview: PreviewInfo | None = Field(
        None,
        description="A cheap preview of the first image while it denoises (EASEL_PREVIEW_INTERVAL_SECONDS); "
        "null until the first one is stored.",
    )
    inputs: dict[str, str | None] = Field(description="Links to the stored image and mask, if any.")
    error: ErrorInfo | None
    attempts: int
    worker_id: str | None
    cancel_requested: bool
    priority: int
    batch_id: str | None = Field(description="Jobs run in one pipeline call share this id.")
    batch_size: int | None = Field(description="Images in that pipeline call (all jobs of the batch).")
    webhook: WebhookState | None
    timings: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outputs_pruned_at: datetime | None = Field(
        None, description="When retention deleted the stored outputs (their links then answer 410)."
    )
    inputs_pruned_at: datetime | None = Field(
        None, description="When retention deleted the stored inputs (their links then answer 410)."
    )


class JobList(BaseModel):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    jobs: list[JobView]
    next_cursor: str | None


class ModelLimits(BaseModel):
    min_size: int
    max_size: int
    default_size: int
    max_steps: int
    default_steps: int
    max_num_images: int
    default_guidance_scale: float
    default_scheduler: str
    size_multiple: int = Field(description="Width and height must be multiples of this.")


class FamilyView(BaseModel):
    """What a model's family decides (docs/models.md)."""

    name: str = Field(description="sd (SD 1.x/2.x), sdxl, sd3 (SD3/3.5) or flux (Flux.1).")
    title: str
    guidance: str = Field(
        description="cfg: classifier-free guidance; distilled: guidance_scale is the model's distilled "
        "guidance input (Flux)."
    )
    negative_prompt: bool = Field(description="Whether jobs may carry a negative prompt.")


class ModelAdapters(BaseModel):
    """The adapters that fit a model, by name (docs/bring-your-models.md)."""

    loras: list[str] = Field(description="LoRAs for `loras` or `<lora:NAME:weight>` tags.")
    controlnets: list[str] = Field(description="ControlNets for `control.model`.")
    vaes: list[str] = Field(description="VAEs for `vae`.")
    embeddings: list[str] = Field(description="Textual-inversion embeddings, used by name in the prompt.")


class ModelView(BaseModel):
    name: str
    default: bool
    family: FamilyView
    architecture: str | None = Field(
        description='The base within the family ("sd1", "sdxl", ...) where known; adapters of another '
        "base do not fit."
    )
    types: list[JobType]
    schedulers: list[str] = Field(description="The schedulers of the model's family.")
    limits: ModelLimits
    workers: int = Field(
        description="Live workers serving this model (heartbeat within EASEL_WORKER_LOST_AFTER_SECONDS); "
        "0: its jobs wait until one starts."
    )
    adapters: ModelAdapters


class ModelList(BaseModel):
    models: list[ModelView]


class ErrorDetail(BaseModel):
    field: str
    message: str
    value: Any = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    """The one error shape."""

    error: ErrorBody
