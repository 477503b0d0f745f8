"""Bring your models: real web and worker processes serving a ComfyUI models folder and an
AUTOMATIC1111 one (docs/bring-your-models.md), offline (a stand-in hub on loopback sees
no request), listed on every surface, and picked up live after a rescan: models and
upscalers alike."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from bench.processes import Stack, wait_for
from tests.adapter_models import build_tiny_embedding, build_tiny_lora, build_tiny_vae, write_kohya_lora
from tests.factories import b64, box_mask, gradient, make_stack
from tests.hub_recorder import HubRecorder, hub_recorder
from tests.model_files import upscaled, write_tiny_esrgan

pytestmark = pytest.mark.slow

SMALL = {"width": 64, "height": 64, "steps": 4, "seed": 21, "scheduler": "ddim", "prompt": "a red box"}


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A ComfyUI ``models`` folder: a diffusers pipeline, a kohya LoRA in a subfolder, a
    VAE file, an embedding, and a partial checkpoint."""
    models = tmp_path_factory.mktemp("comfyui") / "models"
    shutil.copytree(tiny_model, models / "diffusers" / "tiny")
    lora = build_tiny_lora(tiny_model, models.parent / "lora-diffusers")
    write_kohya_lora(lora, models / "loras" / "styles" / "ink.safetensors")
    (models / "vae").mkdir(parents=True)
    build_tiny_vae(tiny_model, models / "vae" / "soft.safetensors")
    (models / "embeddings").mkdir()
    build_tiny_embedding(tiny_model, models / "embeddings" / "shiny.pt")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "half-copied.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    return models


@pytest.fixture(scope="module")
def hub() -> Iterator[HubRecorder]:
    with hub_recorder() as recorder:
        yield recorder


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    comfyui: Path,
    hub: HubRecorder,
    redis_url: str,
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("models-folder-stack")
    env = {
        "EASEL_AUTH_ENABLED": "false",
        "EASEL_BROKER_URL": redis_url,  # wake-ups for models found later: the worker subscribes
        "EASEL_MODELS_DIR": str(comfyui),
        "EASEL_MODELS_RESCAN_SECONDS": "0",  # only when asked: the test says when
        "EASEL_CATALOG_REFRESH_SECONDS": "0.2",
        "EASEL_IDLE_POLL_SECONDS": "30",  # a job for a model found later is claimed on its wake-up
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home / "hf-home"),
    }
    stack = make_stack(home, tiny_model, env)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        stack.env.pop(name, None)  # Easel's own switch (EASEL_OFFLINE, default on) is what is tested
    yield from stack.running(worker=True)


def get(stack: Stack, path: str) -> Any:
    response = stack.http.get(stack.base_url + path, timeout=10)
    response.raise_for_status()
    return response.json()


def pixels(stack: Stack, job: dict[str, Any]) -> np.ndarray:
    assert job["status"] == "succeeded", job
    data = stack.http.get(job["outputs"][0]["url"], timeout=10).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def models(stack: Stack) -> dict[str, Any]:
    return {m["name"]: m for m in get(stack, "/api/v1/models")["models"]}


def test_found_files_are_listed_on_every_surface_without_server_paths(stack: Stack, comfyui: Path) -> None:
    tiny = wait_for(lambda: models(stack).get("tiny"), 60, "the worker's catalog on the web tier")
    assert set(models(stack)) == {"tiny"}  # the folder replaces the built-in models
    assert tiny["default"] and tiny["architecture"] == "unet-32"
    assert tiny["adapters"] == {
        "loras": ["styles/ink"],
        "controlnets": [],
        "vaes": ["soft"],
        "embeddings": ["shiny"],
    }
    files = {(f["kind"], f["name"]): f for f in get(stack, "/api/v1/catalog")["files"]}
    assert files[("lora", "styles/ink")]["details"]["layout"] == "comfyui"
    assert files[("lora", "styles/ink")]["available"] and files[("lora", "styles/ink")]["workers"] == 1
    broken = files[("checkpoint", "half-copied")]
    assert not broken["available"] and "partial" in broken["reason"]
    assert get(stack, "/sdapi/v1/loras")[0]["name"] == "styles/ink"
    assert get(stack, "/sdapi/v1/sd-vae") == [{"model_name": "soft", "filename": "soft"}]
    assert get(stack, "/sdapi/v1/embeddings")["loaded"]["shiny"]["vectors"] == 2
    assert [m["model_name"] for m in get(stack, "/sdapi/v1/sd-models")] == ["tiny"]
    assert [m["id"] for m in get(stack, "/v1/models")["data"]] == ["tiny"]
    for path in ("/api/v1/models", "/api/v1/catalog", "/sdapi/v1/loras", "/sdapi/v1/embeddings"):
        assert str(comfyui.parent) not in stack.http.get(stack.base_url + path, timeout=10).text


def test_jobs_of_every_type_use_the_found_adapters(stack: Stack) -> None:
    wait_for(lambda: "tiny" in models(stack), 60, "the worker's catalog on the web tier")
    image, mask = b64(gradient()), b64(box_mask())
    submitted = {
        "plain": stack.submit(**SMALL),
        "field": stack.submit(**SMALL, loras=[{"name": "styles/ink", "weight": 0.8}]),
        "tag": stack.submit(**{**SMALL, "prompt": "a red box <lora:styles/ink:0.8>"}),
        "zero": stack.submit(**SMALL, loras=[{"name": "styles/ink", "weight": 0}]),
        "vae": stack.submit(**SMALL, vae="soft"),
        "embedding": stack.submit(**{**SMALL, "prompt": "a shiny box"}),
        "img2img": stack.submit(**{**SMALL, "type": "img2img", "image": image, "vae": "soft"}),
        "inpaint": stack.submit(
            **{
                **SMALL,
                "type": "inpaint",
                "image": image,
                "mask": mask,
                "prompt": "a red box <lora:styles/ink>",
            }
        ),
    }
    done = {name: stack.wait(job["id"], timeout=180) for name, job in submitted.items()}
    got = {name: pixels(stack, job) for name, job in done.items()}
    assert np.abs(got["tag"] - got["field"]).max() <= 1  # <lora:x:w> is the field
    assert np.abs(got["zero"] - got["plain"]).max() <= 1  # weight 0 draws as none
    assert np.abs(got["field"] - got["plain"]).max() > 10
    assert np.abs(got["vae"] - got["plain"]).max() > 10
    assert done["vae"]["params"]["vae"] == "soft" and done["tag"]["params"]["loras"][0]["weight"] == 0.8


def test_an_unknown_adapter_is_refused_naming_the_field(stack: Stack) -> None:
    wait_for(lambda: "tiny" in models(stack), 60, "the worker's catalog on the web tier")
    for fields, field in (({"vae": "nope"}, "vae"), ({"loras": [{"name": "nope"}]}, "loras")):
        response = stack.http.post(stack.base_url + "/api/v1/jobs", json={**SMALL, **fields}, timeout=10)
        assert response.status_code == 422, response.text
        assert [d["field"] for d in response.json()["error"]["details"]] == [field]


def test_a_model_copied_in_is_served_after_a_rescan(
    stack: Stack, comfyui: Path, tiny_model: Path, redis_url: str
) -> None:
    wait_for(lambda: "tiny" in models(stack), 60, "the worker's catalog on the web tier")
    shutil.copytree(tiny_model, comfyui / "diffusers" / "later")
    refreshed = stack.http.post(stack.base_url + "/sdapi/v1/refresh-checkpoints", timeout=30)
    assert refreshed.status_code == 200 and refreshed.json() is None
    assert "later" in models(stack)  # the call returned once a worker rescanned
    job = stack.wait(stack.submit(**SMALL, model="later")["id"], timeout=120)
    assert job["status"] == "succeeded", stack.logs()
    # Claimed on its wake-up: the worker subscribed to the new model's queue (the idle poll is 30 s).
    assert redis.Redis.from_url(redis_url).llen("easel.later") == 0
    shutil.rmtree(comfyui / "diffusers" / "later")
    rescanned = stack.http.post(stack.base_url + "/api/v1/models/rescan", timeout=30)
    assert rescanned.status_code == 200 and "later" not in rescanned.json()["models"]
    refused = stack.http.post(stack.base_url + "/api/v1/jobs", json={**SMALL, "model": "later"}, timeout=10)
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "model"


def test_an_upscaler_copied_in_serves_upscale_jobs_after_a_rescan(stack: Stack, comfyui: Path) -> None:
    """A tiny ESRGAN copied into ``upscale_models/``: listed after a rescan, and the worker
    resolves its name to the file: the job's pixels are the model's."""
    wait_for(lambda: "tiny" in models(stack), 60, "the worker's catalog on the web tier")
    model = write_tiny_esrgan(comfyui / "upscale_models" / "4x-tiny.pth")
    rescanned = stack.http.post(stack.base_url + "/api/v1/models/rescan", timeout=30)
    assert rescanned.status_code == 200, rescanned.text
    assert [u["name"] for u in get(stack, "/sdapi/v1/upscalers")] == ["None", "lanczos", "4x-tiny"]
    source = gradient(24, 16)
    job = stack.wait(stack.submit(type="upscale", image=b64(source), upscaler="4x-tiny", scale=4)["id"])
    got = pixels(stack, job)
    assert got.shape == (64, 96, 3)
    assert np.abs(got - upscaled(model, source)).max() <= 1.0


def test_no_process_asked_the_hub(stack: Stack, hub: HubRecorder) -> None:
    """Last in this module: every job above ran with HF_ENDPOINT at the stand-in."""
    job = stack.wait(stack.submit(**SMALL)["id"], timeout=120)
    assert job["status"] == "succeeded"
    assert hub.requests == [], hub.requests


def test_an_a1111_folder_serves_a_real_sd15_file_with_nothing_else(
    tmp_path: Path, tiny_model: Path, hub: HubRecorder
) -> None:
    """The real SD 1.x architecture (random weights, built once into a cache outside the
    work tree) in ``models/Stable-diffusion``: no config, no family, no hub."""
    from easel.worker.engine.single_file import SHIPPED_CONFIGS
    from tests.ldm_convert import ensure_random_sd15

    checkpoint = ensure_random_sd15(SHIPPED_CONFIGS / "v1")
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    (webui / "models" / "Stable-diffusion" / "random-sd15.safetensors").symlink_to(checkpoint)
    env = {
        "EASEL_AUTH_ENABLED": "false",
        "EASEL_MODELS_DIR": str(webui / "models"),
        "EASEL_CATALOG_REFRESH_SECONDS": "0.2",
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    stack = make_stack(tmp_path / "home", tiny_model, env)
    stack.env.pop("HF_HUB_OFFLINE", None)
    before = len(hub.requests)
    try:
        stack.start_web()
        stack.start_worker()
        model = wait_for(lambda: models(stack).get("random-sd15"), 60, "the checkpoint on the web tier")
        assert model["family"]["name"] == "sd" and model["architecture"] == "sd1"
        job = stack.wait(stack.submit(**{**SMALL, "steps": 2})["id"], timeout=600)
        assert job["status"] == "succeeded", stack.logs()
        assert job["model"] == "random-sd15"  # the only model: the default
    finally:
        stack.stop()
    assert hub.requests[before:] == []
