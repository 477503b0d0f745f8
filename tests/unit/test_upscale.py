"""Upscale jobs (the ``upscale`` kind): submitted through REST, run by the runner with the
built-in ``lanczos`` upscaler and no model loaded, batched by upscaler and scale."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from easel.shared.registry import load_registry
from easel.shared.schemas import JobInputs, parse_job_request, resolve_job
from easel.shared.settings import Settings
from easel.shared.upscalers import UpscalerSpec, upscaler_names
from easel.worker.engine.upscale import ModelUpscaler, upscale_tiled
from tests.factories import (
    b64,
    encode,
    fetch,
    gradient,
    make_runner,
    migrated_settings,
    queue_upscale,
    upscale_env,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(home=tmp_path, auth_enabled=False)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    yield from upscale_env(tmp_path)


def test_upscale_jobs_run_batched_without_loading_the_model(env: dict[str, Any]) -> None:
    small, other = gradient(40, 24), gradient(40, 24).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    first = queue_upscale(env, small, scale=2.5)
    second = queue_upscale(env, other, scale=2.5)
    runner = make_runner(env)
    runner.max_batch_images = 4
    assert runner.run_next() in (first, second)
    assert runner.run_next() is None  # both ran in one batch (same upscaler, scale and size)
    assert runner.cache.loads == {}  # no diffusion model was needed
    jobs = [fetch(env, job_id) for job_id in (first, second)]
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert jobs[0].batch_id == jobs[1].batch_id and jobs[0].batch_size == 2
    for job, source in zip(jobs, (small, other), strict=True):
        [output] = job.outputs
        assert (output.width, output.height) == (source.width * 5 // 2, source.height * 5 // 2)
        with Image.open(io.BytesIO(env["storage"].get(output.storage_key))) as stored:
            expected = source.resize((output.width, output.height), Image.Resampling.LANCZOS)
            assert np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(expected))


def test_different_scales_run_apart(env: dict[str, Any]) -> None:
    first = queue_upscale(env, gradient(16, 16), scale=2)
    second = queue_upscale(env, gradient(16, 16), scale=3)
    runner = make_runner(env)
    runner.run_next()
    runner.run_next()
    jobs = [fetch(env, job_id) for job_id in (first, second)]
    assert jobs[0].batch_id != jobs[1].batch_id
    assert [job.outputs[0].width for job in jobs] == [32, 48]


def test_rest_upscale_job_records_its_upscaler_scale_and_size(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/jobs", json={"type": "upscale", "image": b64(gradient(64, 32)), "scale": 3}
    )
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["type"] == "upscale" and job["progress"]["total"] == 1
    assert job["params"]["upscaler"] == "lanczos" and job["params"]["scale"] == 3
    assert (job["params"]["width"], job["params"]["height"]) == (192, 96)
    assert "strength" not in job["params"] and job["inputs"]["image"]
    refused = client.post(
        "/api/v1/jobs",
        json={"type": "upscale", "image": b64(gradient()), "upscaler": "esrgan", "prompt": "x"},
    )
    assert refused.status_code == 422
    fields = {d["field"] for d in refused.get_json()["error"]["details"]}
    assert fields == {"upscaler", "prompt"}


def test_tiles_give_the_whole_images_pixels() -> None:
    """A local model (a 3x3 convolution after a 2x upsample) run in 16-pixel tiles with
    overlap equals the model run on the whole image."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(3, 3, 3, padding=1)).eval()
    image = torch.rand(1, 3, 24, 40)
    with torch.inference_mode():
        whole = model(image)
        tiled = upscale_tiled(model, image, 2, tile=16, overlap=4)
        seams = upscale_tiled(model, image, 2, tile=16, overlap=0)
    assert tiled.shape == whole.shape == (1, 3, 48, 80)
    assert torch.allclose(tiled, whole, atol=1e-6)
    assert not torch.allclose(seams, whole, atol=1e-6)  # without context the tile edges differ


def test_a_model_upscaler_gives_the_jobs_size() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Upsample(scale_factor=4, mode="nearest")
    upscaler = ModelUpscaler(model, 4, tile=8)
    source = gradient(10, 6)
    exact = upscaler(source, (40, 24))
    assert np.array_equal(np.asarray(exact), np.asarray(source.resize((40, 24), Image.Resampling.NEAREST)))
    assert upscaler(source, (20, 12)).size == (20, 12)  # the model's 4x, resized to the job's 2x


def test_a_models_file_upscaler_is_accepted_and_a_broken_one_fails_its_job_alone(
    env: dict[str, Any], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a model")
    env["registry"].upscalers = {"tiny-esrgan": UpscalerSpec(name="tiny-esrgan", location=str(broken))}
    bad = queue_upscale(env, gradient(16, 16), upscaler="tiny-esrgan")
    good = queue_upscale(env, gradient(16, 16), scale=3)
    runner = make_runner(env)
    runner.run_next()
    runner.run_next()
    failed, done = fetch(env, bad), fetch(env, good)
    assert failed.status == "failed" and failed.error_code == "model_load_error"
    assert "upscaler 'tiny-esrgan' cannot be loaded" in failed.error_message
    assert str(broken) not in failed.error_message  # the path is the operator's
    assert done.status == "succeeded"  # the worker kept serving


def test_upscalers_of_the_models_file_are_known_to_jobs_and_a1111(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text("[models.tiny]\nsource = 'tiny'\n\n[upscalers.esrgan-4x]\nlocation = '/srv/4x.pth'\n")
    settings = migrated_settings(home=tmp_path, models_file=models, auth_enabled=False)
    registry = load_registry(settings)
    assert registry.upscalers["esrgan-4x"].location == "/srv/4x.pth"
    assert upscaler_names(registry) == ["lanczos", "esrgan-4x"]
    resolved = resolve_job(
        parse_job_request({"type": "upscale", "upscaler": "esrgan-4x"}),
        registry,
        settings,
        JobInputs(gradient()),
    )
    assert resolved.upscaler == "esrgan-4x"
    models.write_text("[models.tiny]\nsource = 'tiny'\n\n[upscalers.lanczos]\nlocation = '/srv/4x.pth'\n")
    with pytest.raises(ValueError, match=r"\[upscalers.lanczos\]: 'lanczos' is a built-in upscaler's name"):
        load_registry(settings)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_tiny_esrgan_upscales_through_a_job(env: dict[str, Any], tmp_path: Path, suffix: str) -> None:
    """spandrel's ESRGAN class with small widths, saved as a file, named in the registry:
    the job's pixels are the model's, tiled or not."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures import ESRGAN as esrgan

    torch.manual_seed(0)
    model = esrgan.ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).eval()
    path = tmp_path / f"tiny-esrgan{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        save_file(model.state_dict(), str(path))
    env["registry"].upscalers = {"tiny": UpscalerSpec(name="tiny", location=str(path))}
    source = gradient(28, 20)
    job_id = queue_upscale(env, source, upscaler="tiny", scale=4)
    make_runner(env).run_next()
    job = fetch(env, job_id)
    assert job.status == "succeeded", job.error_message
    with torch.inference_mode():
        pixels = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
        expected = model(pixels)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0
    with Image.open(io.BytesIO(env["storage"].get(job.outputs[0].storage_key))) as stored:
        assert stored.size == (112, 80)
        assert np.abs(np.asarray(stored.convert("RGB"), dtype=np.float32) - expected).max() <= 1.0
    tiled = ModelUpscaler(model, 4, tile=8)(source, (112, 80))
    with Image.open(io.BytesIO(env["storage"].get(job.outputs[0].storage_key))) as stored:
        assert np.array_equal(np.asarray(tiled), np.asarray(stored.convert("RGB")))


def test_the_upscale_page_submits_an_upscale_job(app: Flask) -> None:
    app.config["WTF_CSRF_ENABLED"] = False  # CSRF has its own tests (test_security.py)
    client = app.test_client()
    page = client.get("/upscale").get_data(as_text=True)
    assert '<option value="lanczos" selected>lanczos</option>' in page and 'name="scale"' in page
    refused = client.post(
        "/upscale", data={"type": "upscale", "scale": "20"}, content_type="multipart/form-data"
    )
    assert refused.status_code == 422
    assert 'id="scale-error"' in refused.get_data(as_text=True)
    no_image = client.post("/upscale", data={"type": "upscale"}, content_type="multipart/form-data")
    assert no_image.status_code == 422 and 'id="image-error"' in no_image.get_data(as_text=True)
    image = (io.BytesIO(encode(gradient(32, 16))), "in.png")
    response = client.post(
        "/upscale",
        data={"type": "upscale", "upscaler": "lanczos", "scale": "2", "image": image},
        content_type="multipart/form-data",
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["type"] == "upscale" and (job["params"]["width"], job["params"]["height"]) == (64, 32)
    assert "&#34;upscale&#34;: &#34;/upscale&#34;" in client.get(f"/jobs/{job_id}").get_data(as_text=True)
