"""AUTOMATIC1111's extras as upscale jobs: ``/sdapi/v1/upscalers`` and
``/sdapi/v1/extra-single-image`` held until a runner in this process finishes the job."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webuiapi
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from bench.processes import install_tiny_model, wait_for
from easel.shared.db import make_engine
from easel.shared.errors import ValidationFailed
from easel.shared.models import Job
from easel.shared.registry import load_registry
from easel.shared.settings import Settings
from easel.shared.storage import LocalStorage
from easel.web.a1111_extras import extras_fields
from easel.worker.engine.pipelines import PipelineCache
from easel.worker.engine.runner import JobRunner
from tests.factories import b64, gradient, migrated_settings


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path) -> Settings:
    install_tiny_model(tiny_model, tmp_path)  # for the img2img of the SD upscale script
    return migrated_settings(home=tmp_path, auth_enabled=False, sync_timeout_seconds=60)


def no_model(spec: Any) -> Any:
    raise AssertionError(f"an upscale job loaded model {spec.name}")


def test_extras_payload_maps_to_an_upscale_job() -> None:
    fields = extras_fields({"upscaler_1": "LANCZOS", "upscaling_resize": 3, "gfpgan_visibility": 0}, None)
    assert fields == {"type": "upscale", "upscaler": "lanczos", "scale": 3}
    assert extras_fields({}, None)["upscaler"] == "lanczos"  # A1111's "None": a plain resize


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
        ({"codeformer_visibility": 0.5}, "codeformer_visibility"),
        ({"extras_upscaler_2_visibility": 0.3}, "extras_upscaler_2_visibility"),
        ({"resize_mode": 1}, "resize_mode"),
    ],
)
def test_extras_refuse_what_easel_cannot_do(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        extras_fields(body, None)
    assert [d["field"] for d in info.value.details] == [field]


def test_upscalers_are_listed_in_a1111s_shape(client: FlaskClient) -> None:
    names = [item["name"] for item in client.get("/sdapi/v1/upscalers").json]
    assert names == ["None", "lanczos"]


def test_extra_single_image_holds_until_the_upscale_job_is_done(app: Flask, settings: Settings) -> None:
    client = app.test_client()  # not the fixture's: its contexts stay in the calling thread
    source = gradient(32, 24)
    body = {"image": b64(source), "upscaler_1": "Lanczos", "upscaling_resize": 2}
    answer = run_while(lambda: client.post("/sdapi/v1/extra-single-image", json=body), settings)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    with Image.open(io.BytesIO(base64.b64decode(answer.json["image"]))) as image:
        expected = source.resize((64, 48), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))


def test_a_refused_extras_call_records_no_job(client: FlaskClient, settings: Settings) -> None:
    response = client.post(
        "/sdapi/v1/extra-single-image", json={"image": b64(gradient()), "upscaler_1": "nope"}
    )
    assert response.status_code == 422
    engine = make_engine(settings.database_url)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Job)) == 0
    engine.dispose()


# -- the webuiapi client against this app over HTTP ------------------------------------------


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    """The app behind a real HTTP server on a free local port: its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def run_while(call: Callable[[], Any], settings: Settings, loader: Callable[[Any], Any] = no_model) -> Any:
    """``call()`` in a thread while a runner in this one runs the job it holds for: its answer."""
    answers: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            answers.append(call())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    engine = make_engine(settings.database_url)
    registry = load_registry(settings)
    runner = JobRunner(
        sessions=sessionmaker(engine, expire_on_commit=False),
        registry=registry,
        storage=LocalStorage(settings.home / "outputs"),
        cache=PipelineCache(loader=loader),
        worker_id="test:1",
        models=list(registry.names()),
    )
    try:
        wait_for(runner.run_next, 60, "the job to be queued and run")
        thread.join(60)
    finally:
        engine.dispose()
    if errors:
        raise errors[0]
    [answer] = answers
    return answer


def test_webuiapi_extra_single_image_is_an_upscale_job(served: str, settings: Settings) -> None:
    api = webuiapi.WebUIApi(baseurl=f"{served}/sdapi/v1")
    source = gradient(32, 24)
    result = run_while(
        lambda: api.extra_single_image(source, upscaler_1="Lanczos", upscaling_resize=2), settings
    )
    assert result.image.size == (64, 48)
    expected = source.resize((64, 48), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected))


def test_webuiapi_img2img_with_the_sd_upscale_script(served: str, settings: Settings) -> None:
    from easel.worker.engine.device import DevicePlan
    from easel.worker.engine.pipelines import load_pipeline

    api = webuiapi.WebUIApi(baseurl=f"{served}/sdapi/v1")
    assert api.get_scripts()["img2img"] == ["sd upscale"]

    def call() -> Any:
        return api.img2img(
            images=[gradient(48, 40)],
            prompt="a pond",
            width=64,
            height=64,
            steps=2,
            seed=3,
            denoising_strength=0.5,
            sampler_name="Euler",
            script_name="SD upscale",
            script_args=["", 16, 0, 2],
        )

    result = run_while(call, settings, lambda spec: load_pipeline(spec, DevicePlan("cpu", "float32")))
    assert result.image.size == (96, 80)  # the input's size times scale_factor
    assert result.info["width"] == 64  # A1111's width: the tile's
    assert result.info["extra_generation_params"] == {"SD upscale overlap": 16, "SD upscale upscaler": "None"}
    with pytest.raises(RuntimeError) as caught:
        api.img2img(
            images=[gradient(48, 40)], prompt="p", script_name="SD upscale", script_args=["", 8, 9, 2]
        )
    status, text = caught.value.args
    assert status == 422 and json.loads(text)["detail"][0]["loc"] == ["body", "script_args"]
    with pytest.raises(RuntimeError) as caught:
        api.img2img(images=[gradient(48, 40)], prompt="p", script_name="Loopback")
    assert json.loads(caught.value.args[1])["detail"][0]["loc"] == ["body", "script_name"]
