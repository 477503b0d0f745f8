"""The job-kind table (``shared.kinds``): validation, defaults, the worker's call, the CLI
and the OpenAPI document all read it, so a changed row changes each of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from easel.cli import submit as submit_command
from easel.shared.errors import ValidationFailed
from easel.shared.kinds import INPUT_COLUMNS, INPUTS, KIND_NAMES, KINDS, kind_of
from easel.shared.models import INPUTS_DUE, Job, JobType
from easel.shared.registry import load_registry
from easel.shared.schemas import JobInputs, ResolvedJob, parse_job_request, resolve_job
from easel.shared.settings import Settings
from easel.web.openapi import openapi_document
from easel.worker.engine.adapters import control_kwargs


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def resolve(settings: Settings, inputs: JobInputs | None = None, **fields: Any) -> ResolvedJob:
    return resolve_job(
        parse_job_request({"prompt": "p", **fields}), load_registry(settings), settings, inputs
    )


def refused(settings: Settings, inputs: JobInputs | None = None, **fields: Any) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        resolve(settings, inputs, **fields)
    return {d["field"]: d["message"] for d in info.value.details}


def picture(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (64, 64))


def test_every_job_type_has_one_kind_and_every_input_a_column() -> None:
    assert list(KINDS) == list(JobType) and KIND_NAMES == ("txt2img", "img2img", "inpaint", "upscale")
    assert all(hasattr(Job, item.column) for item in INPUTS)
    for column in INPUT_COLUMNS:  # retention finds a job with any stored input (its partial index)
        assert f"{column} IS NOT NULL" in INPUTS_DUE


def test_a_kinds_inputs_and_knobs_decide_what_is_required_and_refused(settings: Settings) -> None:
    assert refused(settings, type="txt2img", mask_blur=2) == {"mask_blur": "applies only to inpaint jobs"}
    assert refused(settings, type="img2img", inputs=None) == {"image": "is required for img2img jobs"}
    errors = refused(settings, JobInputs(image=picture()), type="txt2img", strength=0.5)
    assert errors == {
        "strength": "applies only to img2img and inpaint jobs",
        "image": "applies only to img2img, inpaint and upscale jobs",
    }


def test_defaults_of_the_kinds_knobs(settings: Settings) -> None:
    inpaint = resolve(settings, JobInputs(image=picture(), mask=picture("L")), type="inpaint")
    assert (inpaint.strength, inpaint.mask_blur, inpaint.keep_unmasked) == (1.0, 4, True)
    assert (inpaint.width, inpaint.height) == (64, 64)  # the input's size (SizeRule.INPUT)
    img2img = resolve(settings, JobInputs(image=picture()), type="img2img")
    assert (img2img.strength, img2img.mask_blur, img2img.keep_unmasked) == (0.75, None, None)
    txt2img = resolve(settings, type="txt2img")
    assert (txt2img.strength, txt2img.width) == (None, 256)  # the model's size (SizeRule.MODEL)


def test_an_upscale_job_takes_an_image_an_upscaler_and_a_scale(settings: Settings) -> None:
    job = resolve(settings, JobInputs(image=picture()), type="upscale", prompt=None, scale=2.5)
    assert (job.upscaler, job.scale, job.width, job.height) == ("lanczos", 2.5, 160, 160)
    assert (job.prompt, job.steps, job.num_images, job.strength) == ("", 1, 1, None)
    assert resolve(settings, JobInputs(image=picture()), type="upscale", prompt=None).scale == 2.0


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"upscaler": "esrgan-4x"}, "upscaler", "unknown upscaler 'esrgan-4x'; known: lanczos"),
        ({"scale": 9}, "scale", "less than or equal to 8"),
        ({"scale": 0.5}, "scale", "greater than or equal to 1"),
        ({"scale": 8, "big": True}, "scale", "makes 8192x16384; sides of at most 8192"),
        ({"prompt": "a cat"}, "prompt", "applies only to txt2img, img2img and inpaint jobs"),
        ({"steps": 30}, "steps", "applies only to txt2img, img2img and inpaint jobs"),
        ({"width": 256}, "width", "applies only to txt2img, img2img and inpaint jobs"),
        ({"strength": 0.5}, "strength", "applies only to img2img and inpaint jobs"),
        ({"no_image": True}, "image", "is required for upscale jobs"),
    ],
)
def test_bad_upscale_fields_are_named(
    settings: Settings, fields: dict[str, Any], field: str, text: str
) -> None:
    big, no_image = fields.pop("big", False), fields.pop("no_image", False)
    image = None if no_image else Image.new("RGB", (1024, 2048) if big else (64, 64))
    fields = {"prompt": None, **fields}
    errors = refused(settings, JobInputs(image=image), type="upscale", **fields)
    assert text in errors[field], errors


def test_an_upscaler_or_scale_is_refused_on_other_kinds(settings: Settings) -> None:
    errors = refused(settings, type="txt2img", upscaler="lanczos", scale=2)
    assert errors == {"upscaler": "applies only to upscale jobs", "scale": "applies only to upscale jobs"}


def test_a_changed_row_changes_validation_and_defaults(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """img2img made to take a mask and a different strength: nothing else to edit."""
    row = KINDS[JobType.IMG2IMG]
    monkeypatch.setitem(
        KINDS, JobType.IMG2IMG, replace(row, inputs=("image", "mask"), knobs={"strength": 0.3})
    )
    assert refused(settings, JobInputs(image=picture()), type="img2img") == {
        "mask": "is required for img2img jobs"
    }
    job = resolve(settings, JobInputs(image=picture(), mask=picture("L")), type="img2img")
    assert job.strength == 0.3


def test_the_worker_call_reads_the_kind() -> None:
    images = [picture()]
    assert set(control_kwargs(JobType.TXT2IMG, images, 1.0)) == {"image", "controlnet_conditioning_scale"}
    assert "control_image" in control_kwargs(JobType.INPAINT, images, 1.0)
    assert kind_of("inpaint").call_inputs == {"image": "image", "mask": "mask_image"}
    assert kind_of("img2img").pipeline == "AutoPipelineForImage2Image"


def test_the_cli_and_the_openapi_document_list_the_kinds() -> None:
    option = next(p for p in submit_command.params if p.name == "job_type")
    assert tuple(option.type.choices) == KIND_NAMES
    assert {"upscaler", "scale"} <= {p.name for p in submit_command.params}  # the knobs of the kinds
    document = openapi_document()
    listing = document["paths"]["/api/v1/jobs"]["get"]["parameters"]
    assert next(p for p in listing if p["name"] == "type")["schema"]["enum"] == list(KIND_NAMES)
    body = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    examples = body["examples"]
    assert set(examples) == set(KIND_NAMES)
    assert examples["inpaint"]["value"]["mask_blur"] == 4 and "mask" in examples["inpaint"]["value"]
    upscale = examples["upscale"]["value"]
    assert "prompt" not in upscale and (upscale["upscaler"], upscale["scale"]) == ("lanczos", 2.0)
