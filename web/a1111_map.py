"""AUTOMATIC1111 requests and answers as Easel jobs: pure mappings for ``web.a1111``.

A1111's samplers map to Easel's schedulers, its payload to job fields, a finished job
to its ``info`` JSON, and Easel errors to A1111's (FastAPI's) error shapes.
"""

from __future__ import annotations

import json
from typing import Any

from easel.shared.errors import ValidationFailed, field_detail
from easel.shared.models import Job

# A1111's sampler names, their aliases, and the Easel scheduler each one runs.
SAMPLERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Euler a": ("euler_a", ("k_euler_a", "k_euler_ancestral")),
    "Euler": ("euler", ("k_euler",)),
    "DPM++ 2M": ("dpmpp_2m", ("k_dpmpp_2m",)),
    "DDIM": ("ddim", ()),
    "LCM": ("lcm", ("k_lcm",)),
    "PNDM": ("pndm", ()),
    "UniPC": ("unipc", ()),
}
SCHEDULE_TYPES = ("automatic",)  # A1111 1.9+'s separate noise schedule: Easel has one
# Features Easel does not have: a true value is refused rather than silently dropped.
UNSUPPORTED = ("enable_hr", "restore_faces", "tiling", "script_name", "alwayson_scripts", "styles")
# Easel's field names as A1111's.
FIELDS = {
    "guidance_scale": "cfg_scale",
    "scheduler": "sampler_name",
    "num_images": "batch_size",
    "strength": "denoising_strength",
    "image": "init_images",
    "model": "sd_model_checkpoint",
    "vae": "sd_vae",
}
VAE_OWN = ("automatic", "none", "")
"""A1111's ``sd_vae`` values that mean the model's own VAE (case-insensitive)."""
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
INFO_VERSION = "easel"


def _lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, (scheduler, aliases) in SAMPLERS.items():
        for alias in (name, *aliases, scheduler):
            table[alias.lower()] = scheduler
    return table


_SCHEDULER_OF = _lookup()
_SAMPLER_OF = {scheduler: name for name, (scheduler, _) in SAMPLERS.items()}


def invalid(field: str, message: str, value: Any = None) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", [field_detail(field, message, value)])


def scheduler_for(sampler: Any) -> str:
    """Easel's scheduler for an A1111 sampler name or alias (case-insensitive)."""
    scheduler = _SCHEDULER_OF.get(sampler.strip().lower()) if isinstance(sampler, str) else None
    if scheduler is None:
        raise invalid("sampler_name", f"unknown sampler; known: {', '.join(SAMPLERS)}", sampler)
    return scheduler


def sampler_for(scheduler: str) -> str:
    """The A1111 sampler name of an Easel scheduler."""
    return _SAMPLER_OF.get(scheduler, scheduler)


def samplers() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers``."""
    return [
        {"name": name, "aliases": [*aliases, scheduler], "options": {}}
        for name, (scheduler, aliases) in SAMPLERS.items()
    ]


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name, 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(name, "must be a whole number of at least 1", value)
    return value


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name in UNSUPPORTED:
        if body.get(name):
            raise invalid(name, "is not supported by Easel", body[name])
    if body.get("subseed_strength"):
        raise invalid(
            "subseed_strength", "variation seeds are not supported by Easel", body["subseed_strength"]
        )
    schedule = body.get("scheduler")
    if schedule not in (None, "") and str(schedule).lower() not in SCHEDULE_TYPES:
        raise invalid("scheduler", "only the automatic schedule is supported; pick a sampler_name", schedule)


def vae_for(value: Any) -> str | None:
    """Easel's ``vae`` for an A1111 ``sd_vae``: ``None`` (the model's own) for
    ``Automatic`` and ``None``; a file name (``x.safetensors``, as A1111 lists VAEs) is
    the name without its suffix."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid("sd_vae", "must be a VAE name, Automatic or None", value)
    name = value.strip()
    if name.lower() in VAE_OWN:
        return None
    for suffix in VAE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def job_fields(
    body: dict[str, Any], model: str | None, img2img: bool = False, vae: str | None = None
) -> dict[str, Any]:
    """The Easel job fields of a ``txt2img`` / ``img2img`` payload (images aside).

    ``model`` and ``vae`` are the checkpoint and ``sd_vae`` chosen with ``POST
    /sdapi/v1/options``; the payload's ``override_settings.sd_model_checkpoint`` and
    ``override_settings.sd_vae`` win over them.
    """
    _refuse_unsupported(body)
    fields: dict[str, Any] = {"prompt": body.get("prompt") or ""}
    if body.get("negative_prompt"):
        fields["negative_prompt"] = body["negative_prompt"]
    seed = body.get("seed", -1)
    if seed is not None and seed != -1:
        fields["seed"] = seed
    for name, field in (
        ("steps", "steps"),
        ("cfg_scale", "guidance_scale"),
        ("width", "width"),
        ("height", "height"),
    ):
        if body.get(name) is not None:
            fields[field] = body[name]
    sampler = body.get("sampler_name") or body.get("sampler_index")
    if sampler:
        fields["scheduler"] = scheduler_for(sampler)
    fields["num_images"] = _count(body, "batch_size") * _count(body, "n_iter")
    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise invalid("override_settings", "must be an object", overrides)
    checkpoint = overrides.get("sd_model_checkpoint") or model
    if checkpoint:
        fields["model"] = checkpoint
    chosen = vae_for(overrides["sd_vae"]) if "sd_vae" in overrides else vae_for(vae)
    if chosen is not None:
        fields["vae"] = chosen
    if img2img and body.get("denoising_strength") is not None:
        fields["strength"] = body["denoising_strength"]
    return fields


def info(job: Job, sampler: str | None = None) -> str:
    """The ``info`` JSON string of A1111's answer for a finished job."""
    seeds = [output.seed for output in job.outputs] or [job.seed]
    count = max(len(job.outputs), 1)
    sampler = sampler or sampler_for(job.scheduler)
    text = (
        f"{job.prompt}\nNegative prompt: {job.negative_prompt}\n"
        f"Steps: {job.steps}, Sampler: {sampler}, CFG scale: {job.guidance_scale:g}, "
        f"Size: {job.width}x{job.height}, Model: {job.model}" + (f", VAE: {job.vae}" if job.vae else "")
    )
    return json.dumps(
        {
            "prompt": job.prompt,
            "all_prompts": [job.prompt] * count,
            "negative_prompt": job.negative_prompt,
            "all_negative_prompts": [job.negative_prompt] * count,
            "seed": seeds[0],
            "all_seeds": seeds,
            "subseed": seeds[0],
            "all_subseeds": seeds,
            "subseed_strength": 0,
            "width": job.width,
            "height": job.height,
            "sampler_name": sampler,
            "cfg_scale": job.guidance_scale,
            "steps": job.steps,
            "batch_size": count,
            "restore_faces": False,
            "sd_model_name": job.model,
            "sd_model_hash": None,
            "sd_vae_name": job.vae,
            "denoising_strength": job.strength,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "extra_generation_params": {},
            "index_of_first_image": 0,
            "infotexts": [f"{text}, Seed: {seed}" for seed in seeds],
            "styles": [],
            "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S"),
            "clip_skip": 1,
            "is_using_inpainting_conditioning": job.type == "inpaint",
            "version": INFO_VERSION,
            "easel_job_id": job.id,
            "easel_status": job.status,
        }
    )


def a1111_error(status: int, error: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """An Easel error object as A1111 answers it: a 422 lists FastAPI-style ``detail``
    entries with the A1111 field's ``loc``; other errors carry the message in
    ``detail`` (FastAPI) and ``errors`` (A1111's own handler)."""
    message = error.get("message", "")
    if status == 422:
        details = [d for d in error.get("details") or [] if isinstance(d, dict)] or [{"field": "body"}]
        return 422, {
            "detail": [
                {
                    "loc": ["body", FIELDS.get(d.get("field", "body"), d.get("field", "body"))],
                    "msg": d.get("message", message),
                    "type": "value_error",
                    "input": d.get("value"),
                }
                for d in details
            ]
        }
    return status, {"error": error.get("code", "error"), "detail": message, "body": "", "errors": message}
