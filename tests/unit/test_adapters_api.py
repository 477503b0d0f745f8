"""LoRA, ControlNet and prompt-weighting fields through the Flask app: recorded in
canonical form, bad ones refused with 422 naming the field."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from easel.shared.adapters import has_weighting, split_lora_tags, to_compel_syntax
from easel.shared.settings import Settings
from tests.factories import b64, encode, gradient, migrated_settings

MODELS = """
[models.tiny-sd]
source = "tiny"

[models.other]
source = "tiny"

[models.flowy]
source = "directory"
location = "{flux_dir}"
family = "flux"

[loras.ink]
location = "/nowhere/ink"
models = ["tiny-sd"]

[loras.wash]
location = "/nowhere/wash.safetensors"
models = ["tiny-sd", "other"]

[loras.elsewhere]
location = "/nowhere/elsewhere"
models = ["other"]

[controlnets.edges]
location = "/nowhere/edges"
models = ["tiny-sd"]
preprocessor = "canny"

[controlnets.flux-edges]
location = "/nowhere/flux-edges"
models = ["flowy"]
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models.toml"
    models.write_text(MODELS.format(flux_dir=tmp_path / "flux"))
    return migrated_settings(
        home=tmp_path, auth_enabled=False, models_file=models, default_model="tiny-sd", max_loras_per_job=2
    )


def post(client: FlaskClient, **fields: Any) -> Any:
    return client.post("/api/v1/jobs", json={"prompt": "a box", "width": 64, "height": 64, **fields})


def refused(response: Any, field: str) -> str:
    assert response.status_code == 422, response.get_json()
    details = {d["field"]: d["message"] for d in response.get_json()["error"]["details"]}
    assert field in details, details
    return details[field]


def test_loras_and_prompt_tags_are_recorded_sorted_with_the_tags_removed(client: FlaskClient) -> None:
    response = post(client, prompt="a <lora:wash:0.5> box <LORA:ink>", loras=[])
    assert response.status_code == 202, response.get_json()
    params = response.get_json()["params"]
    assert params["prompt"] == "a box"
    assert params["loras"] == [{"name": "ink", "weight": 1.0}, {"name": "wash", "weight": 0.5}]
    plain = post(client).get_json()["params"]
    assert "loras" not in plain and "control" not in plain


def test_bad_loras_are_422_naming_loras(client: FlaskClient) -> None:
    assert "unknown LoRA 'nope'" in refused(post(client, loras=[{"name": "nope"}]), "loras")
    assert "does not fit model 'tiny-sd'" in refused(post(client, loras=[{"name": "elsewhere"}]), "loras")
    too_many = [{"name": "ink"}, {"name": "wash", "weight": 0.2}, {"name": "ink", "weight": 0.3}]
    message = refused(post(client, loras=too_many), "loras")
    assert "at most 2" in message and "ink more than once" in message
    refused(post(client, loras=[{"name": "ink", "weight": 2.5}]), "loras.0.weight")
    refused(post(client, prompt="a <lora:ink:lots> box"), "loras.0.weight")


def test_control_json_and_multipart_store_the_image(client: FlaskClient) -> None:
    response = post(client, control={"model": "edges", "image": b64(gradient()), "scale": 0.5})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["params"]["control"] == {"model": "edges", "scale": 0.5}
    assert client.get(job["inputs"]["control"].replace("http://localhost", "")).status_code == 200
    response = client.post(
        "/api/v1/jobs",
        data={
            "prompt": "p",
            "width": "64",
            "height": "64",
            "control_model": "edges",
            "control_image": (io.BytesIO(encode(gradient())), "c.png"),
            "loras": "wash:0.25",
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    params = response.get_json()["params"]
    assert params["control"] == {"model": "edges", "scale": 1.0}
    assert params["loras"] == [{"name": "wash", "weight": 0.25}]


def test_an_idempotency_key_reused_with_another_control_model_is_a_conflict(client: FlaskClient) -> None:
    image = b64(gradient())
    headers = {"Idempotency-Key": "k1"}
    body = {"prompt": "p", "width": 64, "height": 64, "control": {"model": "edges", "image": image}}
    first = client.post("/api/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202, first.get_json()
    again = client.post("/api/v1/jobs", json=body, headers=headers)
    assert again.get_json()["id"] == first.get_json()["id"]
    other = {**body, "control": {"model": "edges", "image": image, "scale": 0.5}}
    assert client.post("/api/v1/jobs", json=other, headers=headers).status_code == 409


def test_bad_control_is_422_naming_control(client: FlaskClient) -> None:
    image = b64(gradient())
    assert "unknown ControlNet" in refused(post(client, control={"model": "x", "image": image}), "control")
    other = post(client, model="other", control={"model": "edges", "image": image})
    assert "does not fit model 'other'" in refused(other, "control")
    assert "needs an image" in refused(post(client, control={"model": "edges"}), "control")
    refused(post(client, control={"model": "edges", "image": "not base64!"}), "control")
    refused(post(client, control={"model": "edges", "image": b64(gradient())[:50]}), "control")
    refused(post(client, control={"model": "edges", "image": image, "scale": 3}), "control.scale")
    flux = post(client, model="flowy", control={"model": "flux-edges", "image": image})
    assert "not flux ones" in refused(flux, "control")


def test_prompt_weighting_is_refused_where_the_family_has_none(client: FlaskClient) -> None:
    assert post(client, prompt="a (red:1.3) box").status_code == 202
    message = refused(post(client, model="flowy", prompt="a (red:1.3) box"), "prompt")
    assert "flux" in message


def test_weighting_syntax_detection() -> None:
    assert has_weighting("a (red:1.3) box") and has_weighting("(a red box: .5)")
    assert not has_weighting("a (red) box") and not has_weighting("time 10:30 (approx)")
    assert to_compel_syntax("a (red car:1.3) and (blue:0.5)") == "a (red car)1.3 and (blue)0.5"
    assert split_lora_tags("x <lora:a:0.5> y <lora:b>") == (
        "x y",
        [{"name": "a", "weight": 0.5}, {"name": "b"}],
    )


def test_the_forms_offer_loras_and_a_control_image_and_reuse_them(client: FlaskClient) -> None:
    job = post(
        client, loras=[{"name": "ink", "weight": 0.5}], control={"model": "edges", "image": b64(gradient())}
    )
    page = client.get(f"/?from={job.get_json()['id']}").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page and 'name="control_image"' in page
    assert 'value="ink:0.5"' in page and 'value="edges"' in page
    assert 'name="control_image"' in client.get("/edit").get_data(as_text=True)
