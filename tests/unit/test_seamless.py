"""Seamless textures (a job's ``tiling``): circular padding in the denoiser's and the VAE's
convolutions for the call (``worker.engine.seamless``), and the field through REST and A1111."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from easel.shared.db import session_scope
from easel.shared.params import GenerationParams
from easel.shared.registry import ModelSource, ModelSpec
from easel.shared.settings import Settings
from easel.web.a1111_map import job_fields
from easel.worker.engine.claims import claim_batch
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.pipelines import load_pipeline
from easel.worker.engine.seamless import seamless_scope
from tests.factories import (
    DEFAULT_PARAMS,
    b64,
    generate_one,
    generation_request,
    gradient,
    migrated_settings,
)


@pytest.fixture(scope="module")
def pipe(tiny_model: Path) -> Any:
    spec = ModelSpec(name="tiny-sd", source=ModelSource.DIRECTORY, location=str(tiny_model), max_size=512)
    return load_pipeline(spec, DevicePlan("cpu", "float32"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(home=tmp_path, auth_enabled=False, sync_timeout_seconds=0.5)


def modes(pipe: Any) -> set[str]:
    import torch

    return {
        layer.padding_mode
        for module in (pipe.unet, pipe.vae)
        for layer in module.modules()
        if isinstance(layer, torch.nn.Conv2d)
    }


def test_within_the_scope_the_unet_and_vae_wrap_around(pipe: Any) -> None:
    """Circular padding makes the denoiser and the decoder commute with a circular shift of
    the picture: what leaves one edge comes back at the other, hence no seam."""
    import torch

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, pipe.unet.config.in_channels, 16, 16, generator=generator)
    text = torch.randn(1, 4, pipe.unet.config.cross_attention_dim, generator=generator)
    factor = pipe.vae_scale_factor

    def unet(x: Any) -> Any:
        return pipe.unet(x, 10, encoder_hidden_states=text).sample

    def decode(x: Any) -> Any:
        return pipe.vae.decode(x).sample

    def shift(x: Any, by: int) -> Any:
        return torch.roll(x, shifts=(by, by), dims=(-2, -1))

    with torch.inference_mode():
        with seamless_scope(True, pipe):
            assert modes(pipe) == {"circular"}
            wrapped = (unet(shift(latents, 8)) - shift(unet(latents), 8)).abs().max().item()
            decoded = (decode(shift(latents, 4)) - shift(decode(latents), 4 * factor)).abs().max().item()
        plain = (unet(shift(latents, 8)) - shift(unet(latents), 8)).abs().max().item()
    assert wrapped < 1e-4 and decoded < 1e-4
    assert plain > 1e-3  # zero padding: the edges differ
    assert modes(pipe) == {"zeros"}  # set back after


def test_a_tiling_job_draws_otherwise_and_leaves_the_model_as_it_was(pipe: Any) -> None:
    plain = generate_one(pipe, generation_request(width=64, height=64, steps=2))
    tiled = generate_one(pipe, generation_request(width=64, height=64, steps=2, tiling=True))
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(tiled[0]))
    assert modes(pipe) == {"zeros"}
    again = generate_one(pipe, generation_request(width=64, height=64, steps=2))
    assert np.array_equal(np.asarray(plain[0]), np.asarray(again[0]))


def test_tiling_is_part_of_the_batch_key_and_false_is_absent() -> None:
    base = GenerationParams(**DEFAULT_PARAMS)
    assert GenerationParams(**DEFAULT_PARAMS, tiling=False) == base
    assert GenerationParams(**DEFAULT_PARAMS, tiling=True).batch_key() != base.batch_key()
    assert "tiling" not in base.recorded()


def test_tiling_through_rest_and_a1111(client: FlaskClient) -> None:
    made = client.post("/api/v1/jobs", json={"prompt": "a tile", "width": 64, "height": 64, "tiling": True})
    assert made.status_code == 202, made.get_data(as_text=True)
    assert made.json is not None and made.json["params"]["tiling"] is True
    assert job_fields({"prompt": "p", "tiling": True}, None)["tiling"] is True
    assert "tiling" not in job_fields({"prompt": "p", "tiling": False}, None)
    refused = client.post(
        "/api/v1/jobs",
        json={"type": "upscale", "image": b64(gradient(32, 32)), "upscaler": "lanczos", "tiling": True},
    )
    assert refused.status_code == 422 and refused.json is not None
    assert [d["field"] for d in refused.json["error"]["details"]] == ["tiling"]


def test_tiling_jobs_batch_only_with_tiling_jobs(client: FlaskClient, settings: Settings) -> None:
    def submit(**fields: Any) -> str:
        made = client.post("/api/v1/jobs", json={"prompt": "p", "width": 64, "height": 64, **fields})
        assert made.status_code == 202 and made.json is not None
        return str(made.json["id"])

    tiled, plain = submit(tiling=True), submit()
    tiled_too, plain_false = submit(tiling=True), submit(tiling=False)
    with session_scope(settings.database_url) as session:
        first = [job.id for job in claim_batch(session, "test:1", max_images=8)]
        second = [job.id for job in claim_batch(session, "test:1", max_images=8)]
    assert first == [tiled, tiled_too]
    assert second == [plain, plain_false]  # false is no tiling: one batch key


def test_a_compiled_denoiser_wraps_around_too() -> None:
    """Dynamo guards the layers' padding mode: the compiled call follows the scope."""
    import torch

    from easel.worker.engine.fastpath import compile_unet

    class Denoiser(torch.nn.Module):  # type: ignore[misc]  # torch is not analysed
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, sample: Any, timestep: Any) -> Any:
            return self.second(torch.nn.functional.silu(self.first(sample))) * timestep

    pipe = SimpleNamespace(unet=Denoiser())
    sample, timestep = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(1.0)
    with torch.inference_mode():
        plain = pipe.unet(sample, timestep)
        with seamless_scope(True, pipe):
            wrapped = pipe.unet(sample, timestep)
        compile_unet(pipe.unet, backend="eager")
        with seamless_scope(True, pipe):
            assert torch.equal(pipe.unet(sample, timestep), wrapped)
        assert torch.equal(pipe.unet(sample, timestep), plain)
    assert not torch.equal(plain, wrapped)


def test_the_form_sends_tiling_and_is_filled_from_a_tiling_job(settings: Settings) -> None:
    from easel.web import create_app

    app = create_app(settings)
    app.config["WTF_CSRF_ENABLED"] = False  # CSRF has its own tests (test_security.py)
    client = app.test_client()
    assert 'name="tiling"' in client.get("/").get_data(as_text=True)
    response = client.post("/", data={"prompt": "a brick wall", "steps": "2", "tiling": "true"})
    assert response.status_code == 303, response.get_data(as_text=True)
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    assert client.get(f"/api/v1/jobs/{job_id}").get_json()["params"]["tiling"] is True
    again = client.get(f"/?from={job_id}").get_data(as_text=True)
    assert 'name="tiling" value="true" checked' in again
    plain = client.post("/", data={"prompt": "a brick wall", "steps": "2"})  # unchecked: no tiling
    plain_id = plain.headers["Location"].rsplit("/", 1)[-1]
    assert not client.get(f"/api/v1/jobs/{plain_id}").get_json()["params"].get("tiling")
    assert 'name="tiling" value="true" >' in client.get(f"/?from={plain_id}").get_data(as_text=True)
