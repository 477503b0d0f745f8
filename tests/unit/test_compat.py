"""The client-compatibility surfaces without a worker: the OpenAI and AUTOMATIC1111
mappings, their error shapes, HTTP Basic keys, per-key options, interrupting, the
sync timeout, and ``Prefer: wait`` (SQLite, a local folder, authentication on)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image

from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.errors import ValidationFailed
from easel.shared.models import Job
from easel.shared.registry import SCHEDULERS, Registry, demo_spec
from easel.shared.settings import Settings
from easel.web import create_app
from easel.web.a1111_map import SAMPLERS, a1111_error, scheduler_for
from easel.web.a1111_map import job_fields as a1111_fields
from easel.web.openai_api import edit_mask, job_fields, openai_error, parse_size, transparent_area
from easel.web.prefer import prefer_wait
from tests.factories import make_key, migrated_settings

REGISTRY = Registry([demo_spec()], "demo-shapes")


# ---- pure mappings -----------------------------------------------------------------------


def test_openai_fields_map_to_an_easel_job() -> None:
    fields, response_format = job_fields(
        {
            "prompt": "a red circle",
            "model": "dall-e-3",
            "n": 2,
            "size": "64x128",
            "quality": "hd",
            "style": "vivid",
            "user": "u1",
            "seed": 7,
            "steps": 3,
            "scheduler": "ddim",
        },
        REGISTRY,
    )
    assert fields == {
        "prompt": "a red circle",
        "num_images": 2,
        "width": 64,
        "height": 128,
        "seed": 7,
        "steps": 3,
        "scheduler": "ddim",
    }
    assert response_format == "b64_json"
    fields, response_format = job_fields(
        {"prompt": "p", "model": "demo-shapes", "size": "auto", "response_format": "url"}, REGISTRY
    )
    assert fields == {"prompt": "p", "model": "demo-shapes"} and response_format == "url"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "p", "size": "big"}, "size"),
        ({"prompt": "p", "size": "64x"}, "size"),
        ({"prompt": "p", "response_format": "png"}, "response_format"),
        ({"prompt": "p", "stream": True}, "stream"),
        ({"prompt": "p", "output_format": "webp"}, "output_format"),
        ({"prompt": "p", "background": "transparent"}, "background"),
        ({"prompt": "p", "colour": "red"}, "colour"),
    ],
)
def test_openai_fields_refuse_what_easel_cannot_do(body: dict[str, object], param: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        job_fields(body, REGISTRY)
    assert caught.value.details[0]["field"] == param


def test_parse_size() -> None:
    assert parse_size("512x768") == (512, 768)
    assert parse_size(" 64X64 ") == (64, 64)
    assert parse_size("auto") is None


def test_openai_errors_name_the_openai_parameter() -> None:
    status, body = openai_error(
        422,
        {
            "code": "validation_error",
            "message": "width: 2048 is outside",
            "details": [{"field": "width", "message": "outside", "value": 2048}],
        },
    )
    assert status == 400
    assert body == {
        "error": {
            "message": "width: 2048 is outside",
            "type": "invalid_request_error",
            "param": "size",
            "code": "invalid_value",
        }
    }
    assert openai_error(401, {"code": "unauthorized", "message": "m", "details": []})[1]["error"]["code"] == (
        "invalid_api_key"
    )
    status, body = openai_error(429, {"code": "too_many_jobs", "message": "m", "details": []})
    assert (status, body["error"]["type"], body["error"]["code"]) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
    )
    assert openai_error(503, {"code": "storage_unavailable", "message": "m", "details": []})[1]["error"][
        "type"
    ] == ("server_error")


def test_openai_mask_edits_the_fully_transparent_pixels() -> None:
    mask = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    mask.putpixel((1, 1), (0, 0, 0, 0))
    mask.putpixel((2, 2), (0, 0, 0, 128))  # half transparent: kept, as OpenAI does
    easel = edit_mask(mask)
    assert easel.mode == "L"
    assert easel.getpixel((1, 1)) == 255 and easel.getpixel((2, 2)) == 0 and easel.getpixel((0, 0)) == 0
    with pytest.raises(ValidationFailed, match="alpha channel"):
        edit_mask(Image.new("RGB", (8, 8)))
    assert transparent_area(Image.new("RGB", (8, 8))) is None
    assert transparent_area(Image.new("RGBA", (8, 8), (9, 9, 9, 255))) is None
    assert transparent_area(mask).getpixel((1, 1)) == 255


def test_every_a1111_sampler_maps_to_an_easel_scheduler() -> None:
    assert {scheduler for scheduler, _ in SAMPLERS.values()} == set(SCHEDULERS)
    assert scheduler_for("Euler a") == "euler_a"
    assert scheduler_for("dpm++ 2m") == "dpmpp_2m"
    assert scheduler_for("k_euler") == "euler"
    assert scheduler_for("unipc") == "unipc"
    with pytest.raises(ValidationFailed) as caught:
        scheduler_for("Heun")
    assert caught.value.details[0]["field"] == "sampler_name"


def test_a1111_payload_maps_to_an_easel_job() -> None:
    body = {
        "prompt": "a cat",
        "negative_prompt": "dog",
        "seed": -1,
        "steps": 4,
        "cfg_scale": 6.5,
        "width": 64,
        "height": 64,
        "sampler_name": "DDIM",
        "batch_size": 2,
        "n_iter": 2,
        "denoising_strength": 0.7,  # webuiapi sends it for hires fix: not a txt2img field
        "scheduler": "automatic",
        "override_settings": {},
        "alwayson_scripts": {},
        "enable_hr": False,
    }
    fields = a1111_fields(body, model="demo-shapes")
    assert fields == {
        "prompt": "a cat",
        "negative_prompt": "dog",
        "steps": 4,
        "guidance_scale": 6.5,
        "width": 64,
        "height": 64,
        "scheduler": "ddim",
        "num_images": 4,
        "model": "demo-shapes",
    }
    fields = a1111_fields({**body, "seed": 5, "override_settings": {"sd_model_checkpoint": "x"}}, None, True)
    assert (fields["seed"], fields["model"], fields["strength"]) == (5, "x", 0.7)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"enable_hr": True, "hr_prompt": "another"}, "hr_prompt"),
        ({"enable_hr": True, "hr_sampler_name": "Euler"}, "hr_sampler_name"),
        ({"alwayson_scripts": {"ControlNet": {"args": []}}}, "alwayson_scripts"),
        ({"subseed_strength": 0.5}, "subseed_strength"),
        ({"scheduler": "karras"}, "scheduler"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_iter": "two"}, "n_iter"),
    ],
)
def test_a1111_refuses_what_easel_cannot_do(extra: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        a1111_fields({"prompt": "p", **extra}, None)
    assert caught.value.details[0]["field"] == field


def test_a1111_errors_take_fastapis_shape_with_a1111_field_names() -> None:
    status, body = a1111_error(
        422,
        {
            "code": "validation_error",
            "message": "guidance_scale: too big",
            "details": [{"field": "guidance_scale", "message": "too big", "value": 99}],
        },
    )
    assert status == 422
    assert body == {
        "detail": [{"loc": ["body", "cfg_scale"], "msg": "too big", "type": "value_error", "input": 99}]
    }
    status, body = a1111_error(401, {"code": "unauthorized", "message": "no key", "details": []})
    assert (status, body["detail"], body["errors"]) == (401, "no key", "no key")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([], None),
        (["wait=5"], 5),
        (["wait=600"], 60),
        (["wait"], 60),
        (['respond-async, wait="10"'], 10),
        (["handling=lenient; x=y", "Wait=3"], 3),
        (["wait=0"], None),
        (["wait=soon"], None),
        (["return=minimal"], None),
    ],
)
def test_prefer_wait(headers: list[str], seconds: int | None) -> None:
    assert prefer_wait(headers) == seconds


# ---- the app, without a worker ---------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(
        home=tmp_path,
        sync_timeout_seconds=0.5,
        auth_failure_limit="3/minute",
        submit_rate_limit="1000/minute",
        rate_limit="1000/minute",
    )


def basic(password: str, user: str = "easel") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def jobs(settings: Settings) -> list[Job]:
    with session_scope(settings.database_url) as session:
        return list(session.query(Job).order_by(Job.created_at))


def test_openai_refusals_record_no_job(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "a")
    bearer = {"Authorization": f"Bearer {key}"}
    response = client.post(
        "/v1/images/generations", json={"prompt": "p", "size": "1024x1024"}, headers=bearer
    )
    assert response.status_code == 400
    assert response.json["error"]["param"] == "size" and "1024" in response.json["error"]["message"]
    response = client.post("/v1/images/generations", json={"prompt": "p"})
    assert response.status_code == 401
    assert response.json["error"]["code"] == "invalid_api_key"
    assert (
        client.post("/v1/images/edits", json={"prompt": "p"}, headers=bearer).json["error"]["param"]
        == "image"
    )
    assert client.get("/v1/chat/completions", headers=bearer).status_code == 404
    assert jobs(settings) == []


def test_sync_timeout_answers_an_error_naming_the_job(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "a")
    started = time.monotonic()
    response = client.post(
        "/v1/images/generations",
        json={"prompt": "p", "size": "64x64", "steps": 2},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert 0.5 <= time.monotonic() - started < 5
    (job,) = jobs(settings)
    assert response.status_code == 504
    assert response.headers["x-should-retry"] == "false" and response.headers["Easel-Job-Id"] == job.id
    assert response.json["error"]["code"] == "timeout" and job.id in response.json["error"]["message"]
    assert job.status == "queued"  # no worker here: it goes on


def test_basic_auth_accepts_a_key_and_counts_failures(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "a")
    response = client.get("/sdapi/v1/sd-models", headers=basic(key))
    assert response.status_code == 200
    assert [model["title"] for model in response.json] == ["demo-shapes", "tiny-sd"]
    assert client.get("/api/v1/models", headers=basic("", user=key)).status_code == 200  # key as user name
    for _ in range(3):
        response = client.get("/sdapi/v1/sd-models", headers=basic("esk_wrong_key"))
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert response.json["detail"]
    assert client.get("/sdapi/v1/sd-models", headers={"Authorization": "Basic !!!"}).status_code == 429
    assert client.get("/sdapi/v1/sd-models", headers=basic("esk_wrong_again")).status_code == 429
    assert client.get("/sdapi/v1/sd-models", headers=basic(key)).status_code == 200  # a valid key never waits


def test_a1111_options_are_kept_per_key(client: FlaskClient, settings: Settings) -> None:
    first, second = basic(make_key(settings, "a")), basic(make_key(settings, "b"))
    assert client.get("/sdapi/v1/options", headers=first).json["sd_model_checkpoint"] == "tiny-sd"
    assert (
        client.post(
            "/sdapi/v1/options", json={"sd_model_checkpoint": "demo-shapes"}, headers=first
        ).status_code
        == 200
    )
    assert client.get("/sdapi/v1/options", headers=first).json["sd_model_checkpoint"] == "demo-shapes"
    assert client.get("/sdapi/v1/options", headers=second).json["sd_model_checkpoint"] == "tiny-sd"
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd-xl"}, headers=second)
    assert response.status_code == 422
    assert response.json["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]
    # the stored checkpoint is the model of the key's next job (no worker: it times out queued)
    client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2}, headers=first)
    assert [job.model for job in jobs(settings)] == ["demo-shapes"]


def test_a1111_unknown_sampler_is_a_422_naming_it(client: FlaskClient, settings: Settings) -> None:
    response = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "p", "sampler_name": "Heun"},
        headers=basic(make_key(settings, "a")),
    )
    assert response.status_code == 422
    (detail,) = response.json["detail"]
    assert detail["loc"] == ["body", "sampler_name"] and detail["input"] == "Heun"
    assert "Euler a" in detail["msg"]
    assert jobs(settings) == []


def test_progress_and_interrupt_act_on_the_callers_current_job(
    client: FlaskClient, settings: Settings
) -> None:
    mine, theirs = basic(make_key(settings, "a")), basic(make_key(settings, "b"))
    idle = client.get("/sdapi/v1/progress", headers=mine).json
    assert idle["state"]["job_count"] == 0 and idle["progress"] == 0 and idle["current_image"] is None
    for headers in (mine, theirs):  # queued (no worker)
        client.post(
            "/api/v1/jobs",
            json={"prompt": "p", "width": 64, "height": 64, "steps": 3},
            headers={"Authorization": headers["Authorization"]},
        )
    mine_job, theirs_job = jobs(settings)
    progress = client.get("/sdapi/v1/progress", headers=mine).json
    assert progress["state"]["job"] == f"easel-{mine_job.id}" and progress["state"]["job_count"] == 1
    assert progress["state"]["sampling_steps"] == 3
    assert client.post("/sdapi/v1/interrupt", headers=mine).json == {}
    assert [job.status for job in jobs(settings)] == ["canceled", "queued"]
    assert client.post("/sdapi/v1/interrupt", headers=mine).json == {}  # nothing left: no error
    assert jobs(settings)[1].status == "queued" and theirs_job.id == jobs(settings)[1].id


def test_prefer_wait_holds_then_answers_the_job_as_it_is(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "a")
    started = time.monotonic()
    response = client.post(
        "/api/v1/jobs",
        json={"prompt": "p", "width": 64, "height": 64, "steps": 2},
        headers={"Authorization": f"Bearer {key}", "Prefer": "wait=1"},
    )
    assert 1 <= time.monotonic() - started < 5
    assert response.status_code == 202 and response.json["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"
    response = client.post(
        "/api/v1/jobs",
        json={"prompt": "p", "width": 64, "height": 64, "steps": 2},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert "Preference-Applied" not in response.headers


def test_a1111_posts_need_no_csrf_token_with_auth_off(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, auth_enabled=False, sync_timeout_seconds=0.2)
    upgrade(settings.database_url)
    client = create_app(settings).test_client()
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "demo-shapes"})
    assert response.status_code == 200, response.get_data(as_text=True)
    response = client.post("/v1/images/generations", json={"prompt": "p", "size": "64x64", "steps": 2})
    assert response.status_code == 504, json.dumps(response.json)
