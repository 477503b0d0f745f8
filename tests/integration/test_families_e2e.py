"""Every model family, every job type, through real web and worker processes.

Tiny random pipelines of SD 1.x, SDXL, SD3 and Flux (``worker.engine.tiny_families``,
built as diffusers' own tests build them) are saved as directory models and served by
one stack (embedded services) for the whole module. The family of each is read from
its ``model_index.json``; one model declares the wrong family, so its load fails
while the worker keeps serving the others.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bench.processes import Stack
from tests.factories import b64, box_mask, gradient, make_stack

pytestmark = pytest.mark.slow

FAMILIES = ("sdxl", "sd3", "flux")
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny SDXL, SD3 and Flux folders, built once for the module."""
    from easel.worker.engine.tiny_families import save_family_model

    root = tmp_path_factory.mktemp("family-models")
    return {family: save_family_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def family_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, family_models: dict[str, Path]
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("family-stack")
    models_file = home / "models.toml"
    tables = [f"[models.sd]\nsource = 'directory'\nlocation = '{tiny_model}'\nmax_size = 256\n"]
    tables += [
        f"[models.{family}]\nsource = 'directory'\nlocation = '{folder}'\nmax_size = 256\ndefault_size = 64\n"
        for family, folder in family_models.items()
    ]
    # A Flux folder declared SD3: the web tier believes the models file, the worker refuses it.
    tables.append(
        f"[models.mislabeled]\nsource = 'directory'\nlocation = '{family_models['flux']}'\n"
        "family = 'sd3'\nmax_size = 256\ndefault_size = 64\n"
    )
    models_file.write_text("\n".join(tables))
    stack = make_stack(
        home,
        tiny_model,
        {
            "EASEL_AUTH_ENABLED": "false",
            "EASEL_MODELS_FILE": str(models_file),
            "EASEL_DEFAULT_MODEL": "sd",
            "EASEL_MAX_LOADED_MODELS": "5",
        },
    )
    yield from stack.running(worker=True)


def test_models_listing_shows_each_family(family_stack: Stack) -> None:
    response = family_stack.http.get(family_stack.base_url + "/api/v1/models", timeout=10)
    models = {m["name"]: m for m in response.json()["models"]}
    assert {name: m["family"]["name"] for name, m in models.items()} == {
        "sd": "sd",
        "sdxl": "sdxl",
        "sd3": "sd3",
        "flux": "flux",
        "mislabeled": "sd3",
    }
    assert models["sd"]["schedulers"] == models["sdxl"]["schedulers"]
    assert "euler_a" in models["sdxl"]["schedulers"] and "flow_euler" not in models["sdxl"]["schedulers"]
    assert models["sd3"]["schedulers"] == ["flow_euler", "flow_heun", "flow_lcm"]
    assert models["flux"]["schedulers"] == ["flow_euler", "flow_lcm"]
    assert models["flux"]["family"]["guidance"] == "distilled"
    assert models["flux"]["family"]["negative_prompt"] is False
    for name in ("sd3", "flux"):
        limits = models[name]["limits"]
        assert limits["default_scheduler"] == "flow_euler" and limits["size_multiple"] == 16
        assert models[name]["types"] == ["txt2img", "img2img", "inpaint"]
    assert models["flux"]["limits"]["default_guidance_scale"] == 3.5
    assert models["sdxl"]["limits"]["size_multiple"] == 8


def test_every_family_runs_every_job_type(family_stack: Stack) -> None:
    inputs = {
        "txt2img": {},
        "img2img": {"image": b64(gradient()), "strength": 1.0},
        "inpaint": {"image": b64(gradient()), "mask": b64(box_mask())},
    }
    jobs = {}
    for model in ("sd", *FAMILIES):
        for job_type, extra in inputs.items():
            # Each family's default scheduler; one other flow sampler for SD3.
            fields = {"scheduler": "flow_heun"} if (model, job_type) == ("sd3", "img2img") else {}
            job = family_stack.submit(
                model=model, type=job_type, prompt="a red fox", seed=5, **SMALL, **extra, **fields
            )
            jobs[model, job_type] = job["id"]
    for (model, job_type), job_id in jobs.items():
        done = family_stack.wait(job_id, timeout=300)
        assert done["status"] == "succeeded", (model, job_type, done["error"])
        picture = Image.open(io.BytesIO(family_stack.download(done["outputs"][0]["url"]).content))
        assert picture.size == (64, 64), (model, job_type)
        expected = "flow_heun" if (model, job_type) == ("sd3", "img2img") else None
        if expected or model in ("sd3", "flux"):
            assert done["params"]["scheduler"] == (expected or "flow_euler")


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"model": "sd3", "scheduler": "euler_a"}, "scheduler", "offers flow_euler, flow_heun, flow_lcm"),
        ({"model": "flux", "scheduler": "flow_heun"}, "scheduler", "offers flow_euler, flow_lcm"),
        ({"model": "sdxl", "scheduler": "flow_euler"}, "scheduler", "not a scheduler of model 'sdxl'"),
        ({"model": "flux", "width": 72}, "width", "not a multiple of 16"),
        ({"model": "sd3", "height": 88}, "height", "not a multiple of 16"),
        ({"model": "flux", "negative_prompt": "blurry"}, "negative_prompt", "guidance-distilled"),
    ],
)
def test_request_outside_the_family_is_a_422(
    family_stack: Stack, fields: dict[str, object], field: str, message: str
) -> None:
    response = family_stack.http.post(
        family_stack.base_url + "/api/v1/jobs", json={"prompt": "p", **SMALL, **fields}, timeout=10
    )
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert [d["field"] for d in details] == [field]
    assert message in details[0]["message"]


def test_wrong_family_fails_its_load_and_the_worker_serves_on(family_stack: Stack) -> None:
    bad = family_stack.submit(model="mislabeled", prompt="p", **SMALL)
    done = family_stack.wait(bad["id"], timeout=300)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "model_load_error"
    assert "model 'mislabeled' cannot be loaded on this server" in done["error"]["message"]
    assert "FluxPipeline" not in done["error"]["message"]  # the library's names are the operator's
    good = family_stack.submit(model="flux", prompt="p", **SMALL)
    assert family_stack.wait(good["id"], timeout=300)["status"] == "succeeded"
