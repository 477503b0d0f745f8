"""Request validation: every bad field is named with its value; defaults come from the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from easel.shared.errors import ValidationFailed
from easel.shared.registry import load_registry
from easel.shared.schemas import MAX_SEED, parse_job_request, resolve_job
from easel.shared.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, max_prompt_chars=50)


def submit(settings: Settings, **fields: Any):  # type: ignore[no-untyped-def]
    return resolve_job(parse_job_request(fields), load_registry(settings), settings)


def errors_of(settings: Settings, **fields: Any) -> dict[str, dict[str, Any]]:
    with pytest.raises(ValidationFailed) as info:
        submit(settings, **fields)
    assert info.value.status == 422
    return {d["field"]: d for d in info.value.details}


def test_defaults_come_from_the_model(settings: Settings) -> None:
    job = submit(settings, prompt="a cat")
    assert (job.model, job.width, job.height, job.steps) == ("tiny-sd", 256, 256, 20)
    assert job.scheduler == "euler_a" and job.guidance_scale == 7.5 and job.num_images == 1
    assert 0 <= job.seed < 2**32


def test_explicit_values_are_kept(settings: Settings) -> None:
    explicit = dict(
        width=64, height=128, steps=3, seed=9, scheduler="dpmpp_2m", guidance_scale=0, num_images=4
    )
    job = submit(settings, prompt="a cat", **explicit)
    assert {name: getattr(job, name) for name in explicit} == explicit


def test_form_strings_are_coerced(settings: Settings) -> None:
    job = submit(settings, prompt="a cat", width="64", steps="4", guidance_scale="3.5")
    assert (job.width, job.steps, job.guidance_scale) == (64, 4, 3.5)


@pytest.mark.parametrize(
    ("fields", "field", "value", "text"),
    [
        ({"width": 100}, "width", 100, "multiple of 8"),
        ({"height": 1024}, "height", 1024, "64..512"),
        ({"width": 32}, "width", 32, "64..512"),
        ({"steps": 0}, "steps", 0, "greater than or equal to 1"),
        ({"steps": 151}, "steps", 151, "maximum of 150"),
        ({"guidance_scale": 51}, "guidance_scale", 51, "less than or equal to 50"),
        ({"scheduler": "magic"}, "scheduler", "magic", "must be one of ddim"),
        ({"model": "sdxl"}, "model", "sdxl", "unknown model 'sdxl'"),
        ({"num_images": 0}, "num_images", 0, "greater than or equal to 1"),
        ({"num_images": 5}, "num_images", 5, "maximum of 4"),
        ({"seed": -1}, "seed", -1, "greater than or equal to 0"),
        ({"seed": MAX_SEED, "num_images": 2}, "seed", MAX_SEED, "exceeds the largest seed"),
        ({"strength": 0.5}, "strength", 0.5, "only to img2img and inpaint"),
        ({"type": "img2img"}, "image", None, "is required for img2img jobs"),
        ({"type": "paint"}, "type", "paint", "'txt2img', 'img2img', 'inpaint' or 'upscale'"),
        ({"width": "wide"}, "width", "wide", "valid integer"),
        ({"colour": "red"}, "colour", "red", "not a known field"),
        ({"prompt": "x" * 51}, "prompt", "x" * 51, "at most 50"),
    ],
)
def test_bad_field_is_named_with_its_value(
    settings: Settings, fields: dict[str, Any], field: str, value: Any, text: str
) -> None:
    errors = errors_of(settings, **{"prompt": "a cat", **fields})
    assert field in errors, errors
    assert errors[field]["value"] == value
    assert text in errors[field]["message"]


def test_missing_prompt(settings: Settings) -> None:
    errors = errors_of(settings, width=64)
    assert errors["prompt"]["message"] == "is required"


def test_blank_prompt(settings: Settings) -> None:
    errors = errors_of(settings, prompt="   ")
    assert "at least 1 character" in errors["prompt"]["message"]


def test_every_problem_is_reported_at_once(settings: Settings) -> None:
    with pytest.raises(ValidationFailed) as info:
        submit(settings, prompt="a cat", width=72 * 8, steps=999, num_images=9)
    fields = [d["field"] for d in info.value.details]
    assert fields == ["width", "steps", "num_images"]
    assert "width: 576 is outside model 'tiny-sd'" in info.value.message


def test_priority_above_the_key_limit_needs_an_admin(settings: Settings) -> None:
    assert submit(settings, prompt="p", priority=settings.max_priority).priority == settings.max_priority
    error = errors_of(settings, prompt="p", priority=settings.max_priority + 1)["priority"]
    assert error["value"] == settings.max_priority + 1 and "EASEL_MAX_PRIORITY" in error["message"]
    request = parse_job_request({"prompt": "p", "priority": 500})
    assert resolve_job(request, load_registry(settings), settings, admin=True).priority == 500
    assert "priority" in errors_of(settings, prompt="p", priority=1001)  # the bound holds for admins too
