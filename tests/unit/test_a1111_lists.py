"""AUTOMATIC1111's lists and settings in its shapes (``web.a1111_options``), and ``PLMS``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask.testing import FlaskClient

from easel.shared.settings import Settings
from easel.web.a1111_map import job_fields, sampler_for, sampler_named, samplers, scheduler_for
from easel.web.a1111_options import OPTION_DEFAULTS, realesrgan_models
from tests.factories import migrated_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(home=tmp_path, auth_enabled=False, sync_timeout_seconds=0.5)


def read_options(client: FlaskClient) -> dict[str, Any]:
    options = client.get("/sdapi/v1/options").json
    assert isinstance(options, dict)
    return options


def test_cmd_flags_answer_a1111s_flags_without_server_paths(client: FlaskClient) -> None:
    response = client.get("/sdapi/v1/cmd-flags")
    assert response.status_code == 200
    flags = response.json
    assert isinstance(flags, dict) and flags["api"] is True and flags["nowebui"] is True
    assert flags["medvram"] is False and flags["xformers"] is False
    assert flags["precision"] == "autocast" and flags["max_batch_count"] == 16
    paths = {key: value for key, value in flags.items() if key.endswith(("_dir", "_path", "_auth"))}
    assert paths and set(paths.values()) == {None}


@pytest.mark.parametrize("path", ["hypernetworks", "face-restorers", "prompt-styles", "realesrgan-models"])
def test_lists_easel_has_none_of_are_empty(client: FlaskClient, path: str) -> None:
    response = client.get(f"/sdapi/v1/{path}")
    assert response.status_code == 200 and response.json == []


def test_embeddings_answer_a1111s_shape(client: FlaskClient) -> None:
    response = client.get("/sdapi/v1/embeddings")
    assert response.status_code == 200 and response.json == {"loaded": {}, "skipped": {}}


def test_realesrgan_models_are_easels_upscaler_models() -> None:
    registry = SimpleNamespace(upscalers={"4x-ultra": object(), "2x-small": object()})
    assert realesrgan_models(registry) == [
        {"name": "2x-small", "path": None, "scale": None},
        {"name": "4x-ultra", "path": None, "scale": None},
    ]


def test_options_answer_a1111s_keys_with_its_defaults(client: FlaskClient) -> None:
    options = read_options(client)
    assert set(OPTION_DEFAULTS) <= set(options)
    assert options["send_seed"] is True and options["send_size"] is True
    assert options["CLIP_stop_at_last_layers"] == 1 and options["samples_format"] == "png"
    assert options["sd_model_checkpoint"] == "tiny-sd" and options["sd_vae"] == "Automatic"
    assert options["eta_noise_seed_delta"] == 0 and options["face_restoration"] is False


def test_options_read_then_written_back_whole_succeed(client: FlaskClient) -> None:
    read = read_options(client)
    written = client.post("/sdapi/v1/options", json=read)
    assert written.status_code == 200, written.get_data(as_text=True)
    assert written.json is None and read_options(client) == read
    changed = {**read, "sd_model_checkpoint": "demo-shapes", "send_seed": False, "tiling": True}
    assert client.post("/sdapi/v1/options", json=changed).status_code == 200
    after = read_options(client)
    assert after["sd_model_checkpoint"] == "demo-shapes"  # kept per key
    assert after["send_seed"] is True and after["tiling"] is False  # accepted and ignored
    cleared = client.post("/sdapi/v1/options", json={**after, "sd_model_checkpoint": None})
    assert cleared.status_code == 200  # null, as GET answers with no model: unchanged
    assert read_options(client)["sd_model_checkpoint"] == "demo-shapes"
    refused = client.post("/sdapi/v1/options", json={**after, "sd_model_checkpoint": "nope"})
    assert refused.status_code == 422 and refused.json is not None
    assert refused.json["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]


def test_plms_is_pndm_without_prk_steps() -> None:
    assert scheduler_for("PLMS") == scheduler_for("plms") == "pndm"
    assert job_fields({"prompt": "p", "sampler_name": "PLMS"}, None)["scheduler"] == "pndm"
    assert "PLMS" in [sampler["name"] for sampler in samplers()]
    assert sampler_for("pndm") == "PNDM"  # a job's own scheduler keeps its first name
    assert sampler_named({"sampler_name": "plms"}) == "PLMS"  # the answer's info names what was asked
    assert sampler_named({"sampler_index": "k_euler"}) == "Euler"
    assert sampler_named({"sampler_name": "dpmpp_2m"}) is None  # an Easel name: the job's own

    from diffusers import DDIMScheduler

    from easel.worker.engine.generate import make_scheduler

    scheduler = make_scheduler(scheduler_for("PLMS"), DDIMScheduler().config)
    assert type(scheduler).__name__ == "PNDMScheduler" and scheduler.config.skip_prk_steps
    scheduler.set_timesteps(10)
    assert len(scheduler.prk_timesteps) == 0 and len(scheduler.plms_timesteps) > 0
