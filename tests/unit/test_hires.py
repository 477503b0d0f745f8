"""Hires fix on txt2img: resolved and refused by the request schema, sent through REST and
forms, run by the engine (both passes, one progress count, the target size, seed-exact
batched) and by the runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from easel.shared.errors import ValidationFailed
from easel.shared.registry import ModelSource, ModelSpec, Registry
from easel.shared.schemas import ResolvedJob, parse_job_request, resolve_job
from easel.shared.settings import Settings
from easel.web.a1111_map import a1111_error, info, job_fields
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.generate import GenerationRequest, HiresStage, generate_batch
from easel.worker.engine.pipelines import ModelPipelines, load_pipeline
from easel.worker.engine.upscale import lanczos
from tests.factories import (
    cli_submit_fields,
    enqueue,
    fetch,
    generation_request,
    make_runner,
    migrated_settings,
    rgb_pixels,
)

HIRES = {"width": 128, "height": 128, "upscaler": "latent", "steps": 4, "denoising_strength": 0.5}


def spec_for(location: str = "unused", max_size: int = 128) -> ModelSpec:
    return ModelSpec(
        name="tiny-sd",
        source=ModelSource.DIRECTORY,
        location=location,
        default_size=64,
        max_size=max_size,
        family="sd",
    )


def resolved(**fields: Any) -> ResolvedJob:
    registry = Registry([spec_for()], "tiny-sd")
    return resolve_job(parse_job_request({"prompt": "a cat", **fields}), registry, Settings())


def refused(**fields: Any) -> dict[str, str]:
    """The fields a request is refused for, and their messages."""
    with pytest.raises(ValidationFailed) as caught:
        resolved(**fields)
    return {d["field"]: d["message"] for d in caught.value.details}


# -- the request -----------------------------------------------------------------------------


def test_hires_resolves_its_target_and_defaults() -> None:
    job = resolved(steps=6, hires={})
    assert job.hires is not None and (job.width, job.height) == (64, 64)
    assert job.hires.model_dump() == {
        "width": 128,
        "height": 128,
        "upscaler": "latent",
        "steps": 6,
        "denoising_strength": 0.7,
    }
    assert job.denoising_steps == 6 + 4 and job.output_size == (128, 128)
    one_side = resolved(width=64, height=96, hires={"width": 80, "upscaler": "lanczos", "steps": 5})
    assert one_side.hires is not None and (one_side.hires.width, one_side.hires.height) == (80, 120)
    assert resolved(hires={"scale": 1.5}).output_size == (96, 96)
    assert resolved().hires is None and resolved().output_size == (64, 64)


def test_hires_is_part_of_the_batch_key() -> None:
    plain, latent, lanczos_ = resolved(), resolved(hires={}), resolved(hires={"upscaler": "lanczos"})
    keys = {job.params.batch_key() for job in (plain, latent, lanczos_)}
    assert len(keys) == 3
    assert resolved(hires={}, seed=1).params.batch_key() == resolved(hires={}, seed=2).params.batch_key()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"hires": {"scale": 4}}, "hires.scale"),  # 256 past max_size 128
        ({"hires": {"width": 256}}, "hires.width"),
        ({"hires": {"height": 136}}, "hires.height"),
        ({"hires": {"upscaler": "nope"}}, "hires.upscaler"),
        ({"hires": {"steps": 4, "denoising_strength": 0.1}}, "hires.denoising_strength"),
        ({"hires": {"colour": "red"}}, "hires.colour"),
        ({"hires": {"scale": 9}}, "hires.scale"),
        ({"type": "img2img", "hires": {}}, "hires"),
    ],
)
def test_bad_hires_is_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    assert field in refused(**fields)


def test_hires_on_another_kind_names_the_kinds_that_take_it() -> None:
    assert refused(type="upscale", prompt=None, hires={})["hires"] == "applies only to txt2img jobs"


def test_form_fields_make_the_hires_object() -> None:
    request = parse_job_request(
        {"prompt": "p", "hires_scale": "1.5", "hires_upscaler": "lanczos", "hires_steps": "", "hires": "on"}
    )
    assert request.hires is not None and (request.hires.scale, request.hires.upscaler) == (1.5, "lanczos")
    unchecked = parse_job_request({"prompt": "p", "hires_upscaler": "latent", "hires_steps": "3"})
    assert unchecked.hires is None


# -- AUTOMATIC1111 ---------------------------------------------------------------------------


def test_a1111_hires_fields_map_onto_hires() -> None:
    body = {
        "prompt": "a cat",
        "width": 64,
        "height": 64,
        "steps": 6,
        "enable_hr": True,
        "hr_scale": 2,
        "hr_upscaler": "Latent (bicubic antialiased)",
        "hr_second_pass_steps": 0,  # A1111: the first pass's steps
        "hr_resize_x": 0,
        "hr_resize_y": 0,
        "denoising_strength": 0.6,
        "hr_sampler_name": None,
        "hr_checkpoint_name": "Use same checkpoint",
        "hr_prompt": "",
        "hr_negative_prompt": "",
    }
    fields = job_fields(body, None)
    assert fields["hires"] == {"upscaler": "latent", "scale": 2, "denoising_strength": 0.6}
    job = resolve_job(parse_job_request(fields), Registry([spec_for()], "tiny-sd"), Settings())
    assert job.hires is not None and job.hires.model_dump() == {
        "width": 128,
        "height": 128,
        "upscaler": "latent",
        "steps": 6,
        "denoising_strength": 0.6,
    }
    sized = job_fields({**body, "hr_upscaler": "None", "hr_resize_x": 96, "hr_second_pass_steps": 3}, None)
    assert sized["hires"] == {"upscaler": "lanczos", "width": 96, "steps": 3, "denoising_strength": 0.6}
    assert "hires" not in job_fields({**body, "enable_hr": False}, None)
    assert "hires" not in job_fields(body, None, img2img=True)  # A1111's img2img has no hires fix


def test_a1111_hires_errors_name_a1111s_fields() -> None:
    with pytest.raises(ValidationFailed) as caught:
        resolved(**job_fields({"prompt": "p", "enable_hr": True, "hr_scale": 4}, None))
    status, body = a1111_error(422, {"message": "", "details": caught.value.details})
    assert status == 422 and [d["loc"] for d in body["detail"]] == [["body", "hr_scale"]] * 2


def test_a1111_info_tells_the_hires_fix() -> None:
    from easel.shared.models import utcnow
    from tests.factories import job_row

    hires = {"width": 128, "height": 96, "upscaler": "latent", "steps": 5, "denoising_strength": 0.4}
    answer = json.loads(info(job_row(hires=hires, created_at=utcnow(), id="j1")))
    assert answer["denoising_strength"] == 0.4
    assert answer["extra_generation_params"] == {
        "Hires resize": "128x96",
        "Hires steps": 5,
        "Hires upscaler": "Latent",
    }
    assert json.loads(info(job_row(created_at=utcnow(), id="j2")))["extra_generation_params"] == {}


# -- REST ------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(home=tmp_path, auth_enabled=False)


def test_rest_records_hires_and_counts_both_passes(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/jobs", json={"prompt": "p", "steps": 10, "hires": {"scale": 2, "denoising_strength": 0.5}}
    )
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["params"]["hires"] == {
        "width": 2 * job["params"]["width"],
        "height": 2 * job["params"]["height"],
        "upscaler": "latent",
        "steps": 10,
        "denoising_strength": 0.5,
    }
    assert job["progress"]["total"] == 10 + 5
    again = client.get(f"/api/v1/jobs/{job['id']}").get_json()
    assert again["params"]["hires"] == job["params"]["hires"]


def test_rest_refuses_a_target_past_max_size(client: FlaskClient) -> None:
    response = client.post("/api/v1/jobs", json={"prompt": "p", "hires": {"width": 8192, "height": 64}})
    assert response.status_code == 422
    assert [d["field"] for d in response.get_json()["error"]["details"]] == ["hires.width"]


def test_the_form_sends_hires_and_is_filled_from_a_hires_job(app: Flask) -> None:
    app.config["WTF_CSRF_ENABLED"] = False  # CSRF has its own tests (test_security.py)
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    assert 'name="hires_scale"' in page and '<option value="lanczos"' in page
    fields = {"prompt": "a cat", "steps": "4", "hires": "on", "hires_scale": "2", "hires_upscaler": "lanczos"}
    response = client.post("/", data=fields)
    assert response.status_code == 303, response.get_data(as_text=True)
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["params"]["hires"]["upscaler"] == "lanczos"
    again = client.get(f"/?from={job_id}").get_data(as_text=True)
    width = 2 * job["params"]["width"]
    assert f'name="hires_width" inputmode="numeric" placeholder="scale x width" value="{width}"' in again
    refused = client.post("/", data={**fields, "hires_scale": "9"})
    assert refused.status_code == 422 and 'id="hires.scale-error"' in refused.get_data(as_text=True)


def test_easel_submit_sends_the_hires_options(monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["submit", "a cat", "--hires", "--hires-upscaler", "lanczos", "--hires-denoising-strength", "0.4"]
    sent = cli_submit_fields(monkeypatch, args)
    request = parse_job_request(sent)
    assert request.hires is not None
    assert (request.hires.upscaler, request.hires.denoising_strength, request.hires.scale) == (
        "lanczos",
        0.4,
        None,
    )
    sent = cli_submit_fields(monkeypatch, ["submit", "a cat", "--hires-upscaler", "lanczos"])
    assert parse_job_request(sent).hires is None  # not on: no --hires, scale or size


# -- the engine ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipes(tiny_model: Path) -> tuple[Any, Any]:
    """The tiny model's txt2img pipeline and the img2img one that shares its weights."""
    spec = spec_for(str(tiny_model), 512)
    base = load_pipeline(spec, DevicePlan("cpu", "float32"))
    return base, ModelPipelines(spec, base).for_type("img2img")


def hires_request(seed: int, prompt: str = "a blue bird", **hires: Any) -> GenerationRequest:
    return generation_request(seeds=(seed,), prompt=prompt, hires={**HIRES, **hires})


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_both_passes_make_the_target_size_with_one_progress_count(
    pipes: tuple[Any, Any], upscaler: str
) -> None:
    base, img2img = pipes
    steps: list[tuple[int, int]] = []
    stage = HiresStage(img2img, None if upscaler == "latent" else lanczos)
    request = hires_request(5, upscaler=upscaler)
    (images,) = generate_batch(base, [request], lambda done, total: steps.append((done, total)), hires=stage)
    assert [image.size for image in images] == [(128, 128)]
    total = request.params.denoising_steps
    assert total == 4 + 2 and steps == [(done, total) for done in range(1, total + 1)]
    plain = generate_batch(base, [generation_request(seeds=(5,))])[0][0]
    assert plain.size == (64, 64)


def test_hires_needs_its_second_pass(pipes: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match="second pass"):
        generate_batch(pipes[0], [hires_request(5)])


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_pixels_are_the_same_alone_and_batched(pipes: tuple[Any, Any], upscaler: str) -> None:
    base, img2img = pipes
    stage = HiresStage(img2img, None if upscaler == "latent" else lanczos)
    first = hires_request(21, upscaler=upscaler)
    second = generation_request(seeds=(40, 41), prompt="a red fox", hires={**HIRES, "upscaler": upscaler})
    alone = [generate_batch(base, [r], hires=stage)[0] for r in (first, second)]
    batched = generate_batch(base, [first, second], hires=stage)
    for own, together in zip(alone, batched, strict=True):
        assert len(own) == len(together)
        for a, b in zip(own, together, strict=True):
            # As test_engine's batches: float batching may move a value by one level, no more.
            assert np.abs(pixels(a) - pixels(b)).max() <= 1
    assert np.abs(pixels(batched[1][0]) - pixels(batched[1][1])).mean() > 1.0  # their own seeds


def pixels(image: Any) -> Any:
    return np.asarray(image, dtype=np.int16)


# -- the runner ------------------------------------------------------------------------------


def test_the_runner_runs_a_hires_job_to_its_target_size(env: dict[str, Any]) -> None:
    job_id = enqueue(
        env, steps=3, hires={"scale": 2, "upscaler": "lanczos", "steps": 2, "denoising_strength": 1}
    )
    other = enqueue(
        env, steps=3, hires={"scale": 2, "upscaler": "lanczos", "steps": 2, "denoising_strength": 1}
    )
    plain = enqueue(env, steps=3)  # no hires: another batch key
    runner = make_runner(env)
    runner.max_batch_images = 4
    assert runner.run_next() == job_id
    runner.drain()
    job = fetch(env, job_id)
    assert job.status == "succeeded", job.error_message
    assert (job.progress_step, job.progress_total) == (5, 5)
    assert job.batch_size == 2 and fetch(env, other).batch_id == job.batch_id
    assert fetch(env, plain).status == "queued"
    assert [(o.width, o.height) for o in job.outputs] == [(128, 128)]
    assert rgb_pixels(env["storage"].get(job.outputs[0].storage_key)).shape == (128, 128, 3)


# -- the demo model --------------------------------------------------------------------------

DEMO_PROMPTS = (
    "a red circle on a blue background",
    "a yellow square on a green background",
    "a white triangle on a black background",
    "a blue circle on a white background",
)


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_demo_shapes_hires_64_to_128_still_draws_the_prompt(upscaler: str) -> None:
    """demo-shapes drawn at 64 and redrawn at 128 (its max_size): the judge reads each
    prompt's colours and shape back from the 128-pixel picture."""
    from easel.shared.registry import demo_spec
    from tools.demo_model.world import judge, parse_caption

    spec = demo_spec()
    base = load_pipeline(spec, DevicePlan("cpu", "float32"))
    stage = HiresStage(
        ModelPipelines(spec, base).for_type("img2img"), None if upscaler == "latent" else lanczos
    )
    requests = [
        generation_request(
            model="demo-shapes",
            prompt=prompt,
            seeds=(100 + index,),
            steps=10,
            scheduler="ddim",
            guidance_scale=7.0,
            hires={"width": 128, "height": 128, "upscaler": upscaler, "steps": 10, "denoising_strength": 0.5},
        )
        for index, prompt in enumerate(DEMO_PROMPTS)
    ]
    images = [image for images in generate_batch(base, requests, hires=stage) for image in images]
    assert [image.size for image in images] == [(128, 128)] * len(DEMO_PROMPTS)
    seen = [(v.bg, v.fg, v.shape) for v in map(judge, images)]
    asked = [(s.bg, s.fg, s.shape) for s in map(parse_caption, DEMO_PROMPTS)]
    assert seen == asked


def test_demo_shapes_pictures_upscaled_keep_what_the_prompt_asked() -> None:
    """demo-shapes' 64-pixel pictures, enlarged x2 by an upscale job's engine (``lanczos``,
    ``upscale_batch``): the judge still reads each prompt's colours and shape."""
    from easel.shared.registry import demo_spec
    from easel.worker.engine.upscale import load_upscaler, upscale_batch
    from tools.demo_model.world import judge, parse_caption

    base = load_pipeline(demo_spec(), DevicePlan("cpu", "float32"))
    drawn = generate_batch(
        base,
        [
            generation_request(
                model="demo-shapes", prompt=prompt, seeds=(200 + index,), steps=10, scheduler="ddim"
            )
            for index, prompt in enumerate(DEMO_PROMPTS)
        ],
    )
    asked = [(s.bg, s.fg, s.shape) for s in map(parse_caption, DEMO_PROMPTS)]
    assert [(v.bg, v.fg, v.shape) for v in (judge(images[0]) for images in drawn)] == asked
    requests = [
        generation_request(type="upscale", width=128, height=128, image=images[0]) for images in drawn
    ]
    upscaled = [images[0] for images in upscale_batch(load_upscaler("lanczos"), requests)]
    assert [image.size for image in upscaled] == [(128, 128)] * len(DEMO_PROMPTS)
    assert [(v.bg, v.fg, v.shape) for v in map(judge, upscaled)] == asked
