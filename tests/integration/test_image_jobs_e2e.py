"""img2img and inpaint through real web and worker processes, JSON and multipart."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench.processes import Stack
from easel.worker.pngmeta import read_parameters
from tests.factories import b64, box_mask, encode, gradient, rgb_pixels

pytestmark = pytest.mark.slow


def test_img2img_json(stack: Stack) -> None:
    job = stack.submit(
        type="img2img",
        prompt="repaint",
        image=b64(gradient(96, 64)),
        steps=8,
        strength=0.5,
        seed=21,
        scheduler="euler",
    )
    assert (job["params"]["width"], job["params"]["height"]) == (96, 64)
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["total"] == 4  # 8 steps at strength 0.5
    data = stack.download(done["outputs"][0]["url"]).content
    assert Image.open(io.BytesIO(data)).size == (96, 64)
    assert read_parameters(data)["strength"] == 0.5
    assert Image.open(io.BytesIO(stack.download(done["inputs"]["image"]).content)).size == (96, 64)


def test_inpaint_multipart_keeps_unmasked_pixels(stack: Stack) -> None:
    response = stack.http.post(
        stack.base_url + "/api/v1/jobs",
        data={"type": "inpaint", "prompt": "a window", "steps": "6", "seed": "8", "mask_blur": "0"},
        files={
            "image": ("in.png", encode(gradient()), "image/png"),
            "mask": ("mask.png", encode(box_mask()), "image/png"),
        },
        timeout=10,
    )
    assert response.status_code == 202, response.text
    done = stack.wait(response.json()["id"])
    assert done["status"] == "succeeded", done
    out = rgb_pixels(stack.download(done["outputs"][0]["url"]).content)
    source = rgb_pixels(encode(gradient()))
    keep = np.asarray(box_mask()) == 0
    assert np.array_equal(out[keep], source[keep])
    assert np.abs(out[~keep] - source[~keep]).mean() > 5
    assert set(done["inputs"]) == {"image", "mask"}


def test_img2img_multipart_and_inpaint_json(stack: Stack) -> None:
    response = stack.http.post(
        stack.base_url + "/api/v1/jobs",
        data={"type": "img2img", "prompt": "p", "steps": "4", "width": "64", "height": "64"},
        files={"image": ("in.webp", encode(gradient(128, 128), "WEBP"), "image/webp")},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    inpaint = stack.submit(
        type="inpaint",
        prompt="p",
        steps=4,
        image=b64(gradient(), "JPEG"),
        mask=b64(box_mask()),
        num_images=2,
        seed=3,
    )
    for job_id in (response.json()["id"], inpaint["id"]):
        done = stack.wait(job_id)
        assert done["status"] == "succeeded", done
        for output in done["outputs"]:
            assert Image.open(io.BytesIO(stack.download(output["url"]).content)).size == (64, 64)
    assert [o["seed"] for o in stack.job(inpaint["id"])["outputs"]] == [3, 4]


def test_switching_job_types_loads_nothing_again(stack: Stack) -> None:
    warm = stack.wait(stack.submit(prompt="warm-up", steps=2, width=64, height=64)["id"])
    assert warm["status"] == "succeeded"
    loads = stack.worker_log().count("loaded model tiny-sd")  # other tests may have used other models
    for kind in ("img2img", "inpaint", "txt2img", "inpaint"):
        extra = {"image": b64(gradient())} if kind != "txt2img" else {}
        if kind == "inpaint":
            extra["mask"] = b64(box_mask())
        done = stack.wait(stack.submit(type=kind, prompt=kind, steps=2, width=64, height=64, **extra)["id"])
        assert done["status"] == "succeeded" and done["timings"]["model_cache_hit"], done
    assert stack.worker_log().count("loaded model tiny-sd") == loads
