"""LoRA and ControlNet jobs through real web and worker processes (embedded defaults),
with a models file naming a tiny LoRA, a broken one and a tiny ControlNet."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.processes import Stack
from tests.factories import b64, gradient, make_stack

pytestmark = pytest.mark.slow

MODELS = """
[models.tiny-sd]
source = "directory"
location = '{model}'
max_size = 512

[loras]
ink.location = '{lora}'
ink.models = ["tiny-sd"]
broken.location = '{broken}'
broken.models = ["tiny-sd"]

[controlnets]
edges.location = '{controlnet}'
edges.models = ["tiny-sd"]
edges.preprocessor = "canny"
"""
SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 11, "scheduler": "ddim", "prompt": "a red box"}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_lora: Path, tiny_controlnet: Path
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("adapters-stack")
    broken = home / "broken.safetensors"
    broken.write_bytes(b"not a LoRA")
    models = home / "adapters-models.toml"
    models.write_text(
        MODELS.format(model=tiny_model, lora=tiny_lora, broken=broken, controlnet=tiny_controlnet)
    )
    stack = make_stack(
        home,
        tiny_model,
        {"EASEL_AUTH_ENABLED": "false", "EASEL_MODELS_FILE": str(models), "EASEL_DEFAULT_MODEL": "tiny-sd"},
    )
    yield from stack.running(worker=True)


def pixels(stack: Stack, job: dict[str, Any]) -> np.ndarray:
    assert job["status"] == "succeeded", job
    response = stack.http.get(job["outputs"][0]["url"], timeout=10)
    response.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)


def test_lora_and_controlnet_jobs_end_to_end(stack: Stack) -> None:
    control = {"model": "edges", "image": b64(gradient())}
    submitted = {
        "plain": stack.submit(**SMALL),
        "zero": stack.submit(**SMALL, loras=[{"name": "ink", "weight": 0}]),
        "ink": stack.submit(**{**SMALL, "prompt": "a red box <lora:ink:1>"}),
        "scale0": stack.submit(**SMALL, control={**control, "scale": 0}),
        "control": stack.submit(**SMALL, control=control),
    }
    done = {name: stack.wait(job["id"]) for name, job in submitted.items()}
    got = {name: pixels(stack, job) for name, job in done.items()}
    assert done["ink"]["params"]["loras"] == [{"name": "ink", "weight": 1.0}]
    assert np.abs(got["zero"] - got["plain"]).max() <= 1
    assert np.abs(got["scale0"] - got["plain"]).max() <= 1
    assert np.abs(got["ink"] - got["plain"]).max() > 10
    assert np.abs(got["control"] - got["plain"]).max() > 10
    batch_ids = {done[name]["batch_id"] for name in done}
    assert len(batch_ids) == len(done)  # different adapters never share a pipeline call


def test_a_broken_lora_fails_its_job_and_the_worker_serves_on(stack: Stack) -> None:
    failed = stack.wait(stack.submit(**SMALL, loras=[{"name": "broken"}])["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "model_load_error"
    assert "LoRA 'broken' cannot be loaded on this server" in failed["error"]["message"]
    assert "/" not in failed["error"]["message"].split("(", 1)[0]  # no path before the advice
    assert "error_detail" not in failed["timings"]  # the operator's detail stays off the job object
    assert stack.wait(stack.submit(**SMALL)["id"])["status"] == "succeeded"
