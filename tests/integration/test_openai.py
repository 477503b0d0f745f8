"""The official ``openai`` SDK against real web and worker processes (docs/openai.md)."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from bench.processes import Stack
from tests.factories import encode, gradient

pytestmark = pytest.mark.slow

FAST = {"steps": 2}


def client_for(stack: Stack, api_key: str | None = None) -> OpenAI:
    return OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=api_key or stack.api_key or "unused", max_retries=0
    )


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_generate_b64_json_is_an_ordinary_job(services_stack: Stack) -> None:
    result = client_for(services_stack).images.generate(
        model="tiny-sd",
        prompt="a lighthouse at dusk",
        n=2,
        size="64x96",
        response_format="b64_json",
        quality="hd",  # accepted, ignored
        style="vivid",
        extra_body={"seed": 99, "negative_prompt": "fog", "scheduler": "ddim", **FAST},
    )
    assert len(result.data) == 2
    images = [base64.b64decode(item.b64_json) for item in result.data]
    assert all(png(data).size == (64, 96) for data in images)
    job = services_stack.job(result.model_extra["easel_job_id"])  # the key that asked owns it
    assert job["status"] == "succeeded" and job["type"] == "txt2img"
    assert job["params"]["negative_prompt"] == "fog" and job["params"]["scheduler"] == "ddim"
    assert [output["seed"] for output in job["outputs"]] == [99, 100]
    assert [services_stack.download(output["url"]).content for output in job["outputs"]] == images
    listed = services_stack.http.get(f"{services_stack.base_url}/api/v1/jobs", params={"limit": 20}).json()
    assert job["id"] in [item["id"] for item in listed["jobs"]]  # in the gallery like any job


def test_generate_url_is_a_link_that_needs_no_key(services_stack: Stack) -> None:
    result = client_for(services_stack).images.generate(
        prompt="a small boat", model="dall-e-3", size="64x64", response_format="url", extra_body=FAST
    )
    (item,) = result.data
    assert item.b64_json is None
    response = requests.get(item.url, timeout=10)  # presigned by S3: no Authorization
    assert response.status_code == 200 and png(response.content).size == (64, 64)
    assert (
        services_stack.job(result.model_extra["easel_job_id"])["model"] == "tiny-sd"
    )  # dall-e-3: the default


def test_edit_repaints_the_transparent_pixels_only(services_stack: Stack) -> None:
    picture = gradient(64, 64)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))  # transparent: edit here
    result = client_for(services_stack).images.edit(
        image=("picture.png", encode(picture), "image/png"),
        mask=("mask.png", encode(mask), "image/png"),
        prompt="a red boat",
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 5, "mask_blur": 0, **FAST},
    )
    (item,) = result.data
    job = services_stack.job(result.model_extra["easel_job_id"])
    assert job["status"] == "succeeded" and job["type"] == "inpaint"
    stored = np.asarray(Image.open(io.BytesIO(services_stack.download(job["inputs"]["mask"]).content)))
    assert stored[32, 32] == 255 and stored[2, 2] == 0  # Easel's mask: white repaints
    out = np.asarray(png(base64.b64decode(item.b64_json)).convert("RGB"), dtype=np.int16)
    original = np.asarray(picture, dtype=np.int16)
    assert np.abs(out[:8] - original[:8]).max() <= 2  # far from the hole: kept
    assert np.abs(out[20:44, 20:44] - original[20:44, 20:44]).mean() > 10  # the hole: repainted


def test_edit_without_transparency_is_img2img(services_stack: Stack) -> None:
    result = client_for(services_stack).images.edit(
        image=("picture.png", encode(gradient(64, 64)), "image/png"), prompt="a storm", extra_body=FAST
    )
    job = services_stack.job(result.model_extra["easel_job_id"])
    assert job["type"] == "img2img" and (job["params"]["width"], job["params"]["height"]) == (64, 64)


def test_errors_take_openais_shape(services_stack: Stack) -> None:
    client = client_for(services_stack)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="p", model="tiny-sd", size="4096x4096")
    assert caught.value.status_code == 400
    assert (caught.value.param, caught.value.type) == ("size", "invalid_request_error")
    assert "4096" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="p", model="sd-xl", size="64x64")
    assert caught.value.param == "model" and "tiny-sd" in caught.value.message
    with pytest.raises(openai.AuthenticationError) as refused:
        client_for(services_stack, "esk_wrong_wrong").images.generate(prompt="p", size="64x64")
    assert refused.value.code == "invalid_api_key"
    names = [model.id for model in client.models.list()]
    rest = services_stack.http.get(f"{services_stack.base_url}/api/v1/models").json()["models"]
    assert names == sorted(model["name"] for model in rest)


def test_no_key_needed_with_authentication_off(embedded_stack: Stack) -> None:
    result = client_for(embedded_stack, "anything").images.generate(
        prompt="a pond", size="64x64", extra_body=FAST
    )
    assert png(base64.b64decode(result.data[0].b64_json)).size == (64, 64)
