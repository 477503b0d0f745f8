"""img2img / inpaint submissions through the Flask app: inputs stored, bad input refused."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from easel.shared.settings import Settings
from tests.factories import b64, box_mask, counts, encode, gradient, migrated_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(
        home=tmp_path,
        max_image_bytes=200_000,
        max_image_pixels=1_000_000,
        max_request_bytes=1_000_000,
        auth_enabled=False,
    )


def error_fields(response: Any) -> dict[str, dict[str, Any]]:
    return {d["field"]: d for d in response.get_json()["error"]["details"]}


def test_json_img2img_stores_the_input_and_sizes_from_it(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/jobs", json={"type": "img2img", "prompt": "p", "image": b64(gradient(100, 60))}
    )
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert (job["params"]["width"], job["params"]["height"]) == (104, 64)  # scaled up to the 64 minimum
    assert job["params"]["strength"] == 0.75 and job["progress"]["total"] == 15
    stored = client.get(job["inputs"]["image"].replace("http://localhost", ""))
    assert stored.status_code == 200 and Image.open(io.BytesIO(stored.data)).size == (100, 60)
    assert "mask" not in job["inputs"]


def test_multipart_inpaint_with_explicit_size(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/jobs",
        data={
            "type": "inpaint",
            "prompt": "p",
            "width": "64",
            "height": "64",
            "mask_blur": "2",
            "image": (io.BytesIO(encode(gradient(128, 128), "JPEG")), "in.jpg"),
            "mask": (io.BytesIO(encode(box_mask(128, 128).convert("RGB"))), "mask.png"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["params"]["strength"] == 1.0 and job["params"]["mask_blur"] == 2
    assert job["params"]["keep_unmasked"] is True
    mask = client.get(job["inputs"]["mask"].replace("http://localhost", ""))
    assert Image.open(io.BytesIO(mask.data)).mode == "L"


def bomb() -> bytes:
    return encode(Image.new("L", (2000, 2000), 0))


@pytest.mark.parametrize(
    ("fields", "status", "field", "text"),
    [
        ({"type": "img2img", "image": b64(gradient()) + "!!"}, 422, "image", "not valid base64"),
        ({"type": "img2img", "image": "aGVsbG8="}, 422, "image", "not a PNG, JPEG or WebP"),
        ({"type": "img2img", "image": b64(gradient(), "GIF")}, 422, "image", "format GIF is not supported"),
        ({"type": "img2img"}, 422, "image", "is required for img2img jobs"),
        ({"type": "inpaint", "image": b64(gradient())}, 422, "mask", "is required for inpaint jobs"),
        (
            {"type": "inpaint", "image": b64(gradient()), "mask": b64(box_mask(32, 32))},
            422,
            "mask",
            "is 32x32 but the image is 64x64",
        ),
        ({"type": "img2img", "image": b64(gradient()), "strength": 0}, 422, "strength", "greater than 0"),
        (
            {"type": "img2img", "image": b64(gradient()), "strength": 1.5},
            422,
            "strength",
            "less than or equal to 1",
        ),
        (
            {"type": "img2img", "image": b64(gradient()), "strength": 0.01, "steps": 20},
            422,
            "strength",
            "leaves no denoising step",
        ),
        (
            {"type": "img2img", "image": b64(gradient()), "mask": b64(box_mask())},
            422,
            "mask",
            "applies only to inpaint jobs",
        ),
        (
            {"type": "txt2img", "image": b64(gradient())},
            422,
            "image",
            "applies only to img2img, inpaint and upscale",
        ),
        ({"type": "img2img", "image": 12}, 422, "image", "must be a base64 string"),
    ],
)
def test_bad_inputs_are_refused_and_nothing_is_enqueued(
    client: FlaskClient, settings: Settings, fields: dict[str, Any], status: int, field: str, text: str
) -> None:
    response = client.post("/api/v1/jobs", json={"prompt": "p", **fields})
    assert response.status_code == status, response.get_json()
    detail = error_fields(response)[field]
    assert text in detail["message"]
    assert counts(settings) == (0, 0)
    ok = client.post("/api/v1/jobs", json={"type": "img2img", "prompt": "p", "image": b64(gradient())})
    assert ok.status_code == 202


def test_truncated_upload(client: FlaskClient, settings: Settings) -> None:
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"))
    response = client.post(
        "/api/v1/jobs",
        data={"type": "img2img", "prompt": "p", "image": (io.BytesIO(data[: len(data) // 2]), "cut.png")},
        content_type="multipart/form-data",
    )
    assert (
        response.status_code == 422 and "truncated or corrupt" in error_fields(response)["image"]["message"]
    )
    assert counts(settings) == (0, 0)


def test_image_over_the_byte_limit_is_413(client: FlaskClient, settings: Settings) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    big = Image.fromarray(noise, "RGB")  # 270 kB of noise does not compress
    response = client.post(
        "/api/v1/jobs",
        data={"type": "img2img", "prompt": "p", "image": (io.BytesIO(encode(big)), "big.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert error_fields(response)["image"]["message"] == "exceeds the limit of 200000 bytes"
    assert counts(settings) == (0, 0)


def test_decompression_bomb_is_refused(client: FlaskClient, settings: Settings) -> None:
    response = client.post(
        "/api/v1/jobs",
        data={"type": "img2img", "prompt": "p", "image": (io.BytesIO(bomb()), "bomb.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    assert "4000000 pixels; at most 1000000" in error_fields(response)["image"]["message"]
    assert counts(settings) == (0, 0)
