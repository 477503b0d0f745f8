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
    "PLMS": ("pndm", ()),  # A1111's PLMS is PNDM without its Runge-Kutta (PRK) steps: Easel's pndm
    "UniPC": ("unipc", ()),
}
SCHEDULE_TYPES = ("automatic",)  # A1111 1.9+'s separate noise schedule: Easel has one
# Features Easel does not have: a true value is refused rather than silently dropped.
UNSUPPORTED = ("restore_faces", "script_name", "alwayson_scripts", "styles")
# Easel's field names as A1111's.
FIELDS = {
    "guidance_scale": "cfg_scale",
    "scheduler": "sampler_name",
    "num_images": "batch_size",
    "strength": "denoising_strength",
    "image": "init_images",
    "model": "sd_model_checkpoint",
    "vae": "sd_vae",
    "hires": "enable_hr",
    "hires.scale": "hr_scale",
    "hires.upscaler": "hr_upscaler",
    "hires.steps": "hr_second_pass_steps",
    "hires.denoising_strength": "denoising_strength",
    "hires.width": "hr_resize_x",
    "hires.height": "hr_resize_y",
    "sd_upscale": "script_name",
    "sd_upscale.upscaler": "script_args",
    "sd_upscale.scale": "script_args",
    "sd_upscale.overlap": "script_args",
}
SD_UPSCALE_SCRIPT = "sd upscale"
"""The one A1111 script Easel runs (img2img's "SD upscale", by ``script_name``, any case)."""
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
_SAMPLER_OF: dict[str, str] = {}
for _name, (_scheduler, _aliases) in SAMPLERS.items():
    _SAMPLER_OF.setdefault(_scheduler, _name)  # the first name of a scheduler: pndm is PNDM
_NAME_OF = {alias.lower(): name for name, (_, aliases) in SAMPLERS.items() for alias in (name, *aliases)}


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


def sampler_named(body: dict[str, Any]) -> str | None:
    """The A1111 sampler name a payload asked for by name or alias (``PLMS`` stays
    ``PLMS`` though it runs Easel's ``pndm``); ``None`` when it named none of them."""
    asked = body.get("sampler_name") or body.get("sampler_index")
    return _NAME_OF.get(asked.strip().lower()) if isinstance(asked, str) else None


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


def is_sd_upscale(body: dict[str, Any]) -> bool:
    """Whether a payload's ``script_name`` is A1111's "SD upscale" (any case)."""
    name = body.get("script_name")
    return isinstance(name, str) and name.strip().lower() == SD_UPSCALE_SCRIPT


def _refuse_unsupported(body: dict[str, Any], img2img: bool = False) -> None:
    for name in UNSUPPORTED:
        if name == "script_name" and body.get(name) and img2img and is_sd_upscale(body):
            continue  # the SD upscale script: the job's sd_upscale (web.a1111_extras)
        if name == "script_name" and body.get(name):
            message = "is not supported by Easel (of the scripts, only img2img's 'SD upscale')"
            raise invalid(name, message, body[name])
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


HR_SAME = ("", "use same checkpoint", "use same sampler", "use same scheduler", "automatic")
"""A1111's values of ``hr_checkpoint_name`` / ``hr_sampler_name`` / ``hr_scheduler`` that
mean the first pass's (case-insensitive)."""


def hires_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Easel's ``hires`` of a txt2img payload with ``enable_hr``: ``hr_scale``, or
    ``hr_resize_x`` / ``hr_resize_y`` (0: from the other's aspect); ``hr_upscaler``
    (``Latent ...``: latent; ``None``, A1111's plain resize: lanczos; else an Easel
    upscaler's name); ``hr_second_pass_steps`` (0: the job's steps); ``denoising_strength``.
    A second pass with another prompt, sampler or checkpoint is refused."""
    for name in ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler"):
        value = body.get(name)
        if value is not None and str(value).strip().lower() not in HR_SAME:
            first = body.get("sampler_name") or body.get("sampler_index")
            if name != "hr_sampler_name" or not isinstance(first, str) or value != first:
                raise invalid(name, "a second pass unlike the first is not supported by Easel", value)
    for name, first in (("hr_prompt", "prompt"), ("hr_negative_prompt", "negative_prompt")):
        if body.get(name) and body[name] != (body.get(first) or ""):
            raise invalid(name, f"a second pass with another {first} is not supported by Easel", body[name])
    hires: dict[str, Any] = {}
    upscaler = body.get("hr_upscaler")
    if isinstance(upscaler, str) and upscaler.strip():
        name = upscaler.strip()
        if name.lower().startswith("latent"):
            name = "latent"
        elif name.lower() in ("none", "lanczos"):
            name = "lanczos"
        hires["upscaler"] = name
    elif upscaler is not None:
        raise invalid("hr_upscaler", "must be an upscaler's name", upscaler)
    width, height = body.get("hr_resize_x") or 0, body.get("hr_resize_y") or 0
    if width or height:
        hires.update({key: value for key, value in (("width", width), ("height", height)) if value})
    elif body.get("hr_scale") is not None:
        hires["scale"] = body["hr_scale"]
    if body.get("hr_second_pass_steps"):
        hires["steps"] = body["hr_second_pass_steps"]
    if body.get("denoising_strength") is not None:
        hires["denoising_strength"] = body["denoising_strength"]
    return hires


def job_fields(
    body: dict[str, Any], model: str | None, img2img: bool = False, vae: str | None = None
) -> dict[str, Any]:
    """The Easel job fields of a ``txt2img`` / ``img2img`` payload (images aside).

    ``model`` and ``vae`` are the checkpoint and ``sd_vae`` chosen with ``POST
    /sdapi/v1/options``; the payload's ``override_settings.sd_model_checkpoint`` and
    ``override_settings.sd_vae`` win over them.
    """
    _refuse_unsupported(body, img2img)
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
    for tiling in (overrides.get("tiling"), body.get("tiling")):  # the top-level one wins
        if tiling not in (None, False):  # seamless textures (validated as a job's tiling)
            fields["tiling"] = tiling
    if body.get("enable_hr") and not img2img:  # A1111's img2img has no hires fix: ignored there
        fields["hires"] = hires_fields(body)
    return fields


def _hires_params(job: Job) -> dict[str, Any]:
    """A1111's infotext entries of a job's hires fix (none without one)."""
    if not job.hires:
        return {}
    return {
        "Hires resize": f"{job.hires['width']}x{job.hires['height']}",
        "Hires steps": job.hires["steps"],
        "Hires upscaler": "Latent" if job.hires["upscaler"] == "latent" else job.hires["upscaler"],
    }


def _sd_upscale_params(job: Job) -> dict[str, Any]:
    """A1111's infotext entries of a job's SD upscale (none without one)."""
    if not job.sd_upscale:
        return {}
    upscaler = job.sd_upscale["upscaler"]
    return {
        "SD upscale overlap": job.sd_upscale["overlap"],
        "SD upscale upscaler": "None" if upscaler == "lanczos" else upscaler,
    }


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
            "denoising_strength": job.hires["denoising_strength"] if job.hires else job.strength,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "extra_generation_params": {**_hires_params(job), **_sd_upscale_params(job)},
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
