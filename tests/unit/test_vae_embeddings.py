"""A VAE per job (``vae``) and A1111-style textual-inversion embeddings (a name as a word
of the prompt), on the real tiny models, through the runner, the REST API, the A1111
mapping and ``easel submit`` (tests/adapter_models.py builds the files)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from easel.shared.adapters import (
    AdapterSpec,
    EmbeddingSpec,
    VaeSpec,
    mentioned_embeddings,
    replace_embeddings,
)
from easel.shared.errors import ModelLoadError
from easel.shared.models import JobStatus, JobType
from easel.shared.registry import ModelSource, ModelSpec, Registry, load_registry
from easel.shared.settings import Settings
from easel.web.a1111_map import job_fields
from easel.worker.engine.adapters import (
    embedding_prompt,
    load_embeddings,
    loaded_embeddings,
    pipeline_for,
)
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.generate import GenerationRequest, generate_batch
from easel.worker.engine.pipelines import ModelPipelines, PipelineCache, load_pipeline, weight_bytes
from tests.adapter_models import build_tiny_embedding, build_tiny_vae
from tests.factories import (
    encode,
    enqueue,
    fetch,
    generation_request,
    gradient,
    make_runner,
    migrated_settings,
)

CPU = DevicePlan("cpu", "float32")


@pytest.fixture(scope="module")
def files(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import load_file, save_file

    from tests.ldm_convert import VAE_PREFIX

    root = tmp_path_factory.mktemp("vae-embeddings")
    broken = root / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    vae = build_tiny_vae(tiny_model, root / "mse.safetensors")
    weights = load_file(str(vae))
    prefixed, truncated = root / "mse-in-a-checkpoint.safetensors", root / "truncated.safetensors"
    save_file({VAE_PREFIX + key: value for key, value in weights.items()}, str(prefixed))
    save_file(dict(sorted(weights.items())[:-4]), str(truncated))
    return {
        "model": tiny_model,
        "vae": vae,
        "vae_prefixed": prefixed,
        "vae_truncated": truncated,
        "vae_ckpt": build_tiny_vae(tiny_model, root / "mse.ckpt"),
        "vae_folder": build_tiny_vae(tiny_model, root / "mse-diffusers"),
        "pt": build_tiny_embedding(tiny_model, root / "inkstyle.pt"),
        "safetensors": build_tiny_embedding(tiny_model, root / "washstyle.safetensors", vectors=1),
        "broken": broken,
    }


def tiny_registry(files: dict[str, Path]) -> Registry:
    spec = ModelSpec(
        name="tiny-sd", source=ModelSource.DIRECTORY, location=str(files["model"]), default_size=64
    )

    def vae(name: str, key: str) -> VaeSpec:
        return VaeSpec(name=name, location=str(files[key]), family="sd")

    def embedding(name: str, key: str) -> EmbeddingSpec:
        return EmbeddingSpec(name=name, location=str(files[key]), family="sd")

    return Registry(
        [spec],
        "tiny-sd",
        vaes={
            "mse": vae("mse", "vae"),
            "mse-ckpt": vae("mse-ckpt", "vae_ckpt"),
            "mse-folder": vae("mse-folder", "vae_folder"),
            "mse-prefixed": vae("mse-prefixed", "vae_prefixed"),
            "truncated": vae("truncated", "vae_truncated"),
            "broken": vae("broken", "broken"),
        },
        embeddings={
            "inkstyle": embedding("inkstyle", "pt"),
            "washstyle": embedding("washstyle", "safetensors"),
            "brokenstyle": embedding("brokenstyle", "broken"),
        },
    )


@pytest.fixture(scope="module")
def registry(files: dict[str, Path]) -> Registry:
    return tiny_registry(files)


@pytest.fixture(scope="module")
def pipelines(registry: Registry) -> ModelPipelines:
    return PipelineCache(loader=lambda spec: load_pipeline(spec, CPU)).get(registry.get("tiny-sd"))[0]


def req(seed: int = 3, prompt: str = "a red box", **fields: Any) -> GenerationRequest:
    return generation_request(prompt=prompt, seeds=(seed,), width=64, height=64, steps=3, **fields)


def run(
    pipelines: ModelPipelines, registry: Registry, *requests: GenerationRequest, **options: Any
) -> list[np.ndarray]:
    """The first image of each request, all in one call (as the runner runs a batch)."""
    pipe = pipeline_for(pipelines, requests[0].params, registry)
    for request in requests:
        load_embeddings(pipelines, (request.params.prompt, request.params.negative_prompt), registry)
    results = generate_batch(pipe, list(requests), **options)
    return [np.asarray(images[0].convert("RGB"), dtype=np.int16) for images in results]


def one(pipelines: ModelPipelines, registry: Registry, request: GenerationRequest) -> np.ndarray:
    return run(pipelines, registry, request)[0]


# -- the VAE ----------------------------------------------------------------------------


def test_a_vae_file_changes_the_pixels_and_draws_as_its_diffusers_folder(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    plain = one(pipelines, registry, req())
    single = one(pipelines, registry, req(vae="mse"))
    assert np.abs(single - plain).max() > 10
    # The same weights as an original-layout .safetensors, a weights-only .ckpt, under a full
    # checkpoint's first_stage_model. prefix and in a diffusers folder: the conversion is exact.
    assert np.array_equal(one(pipelines, registry, req(vae="mse-ckpt")), single)
    assert np.array_equal(one(pipelines, registry, req(vae="mse-prefixed")), single)
    assert np.array_equal(one(pipelines, registry, req(vae="mse-folder")), single)
    # The cached pipelines keep their own VAE: a plain job draws as before.
    assert np.array_equal(one(pipelines, registry, req()), plain)
    assert pipelines.for_type(JobType.TXT2IMG).vae is pipelines.base.vae


def test_a_vae_loads_once_shares_the_other_modules_and_counts_in_the_model_bytes(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    params = req(vae="mse").params
    pipe = pipeline_for(pipelines, params, registry)
    assert pipeline_for(pipelines, params, registry) is pipe  # made once, kept warm
    assert pipe.unet is pipelines.base.unet and pipe.text_encoder is pipelines.base.text_encoder
    assert pipe.vae is not pipelines.base.vae
    vae_bytes = sum(p.numel() * p.element_size() for p in pipe.vae.parameters())
    assert pipelines.bytes >= weight_bytes(pipelines.base) + vae_bytes


def test_vae_tiling_is_set_on_the_jobs_vae_and_img2img_encodes_with_it(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    pipe = pipeline_for(pipelines, req(vae="mse").params, registry)
    run(pipelines, registry, req(vae="mse"), vae_tiling_pixels=64 * 64)
    assert pipe.vae.use_tiling and not pipelines.base.vae.use_tiling
    run(pipelines, registry, req(vae="mse"))
    assert not pipe.vae.use_tiling  # set on every call, never left over
    image2image = dict(type=JobType.IMG2IMG, strength=0.6)
    plain = req(**image2image)
    with_vae = req(vae="mse", **image2image)
    own = one(pipelines, registry, GenerationRequest(plain.params, image=gradient()))
    other = one(pipelines, registry, GenerationRequest(with_vae.params, image=gradient()))
    assert np.abs(own - other).max() > 10


def test_a_vae_that_cannot_load_is_a_model_load_error_and_the_model_keeps_serving(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    with pytest.raises(ModelLoadError, match="cannot load VAE 'broken'"):
        pipeline_for(pipelines, req(vae="broken").params, registry)
    with pytest.raises(ModelLoadError, match=r"cannot load VAE 'truncated'.*lacks weights"):
        pipeline_for(pipelines, req(vae="truncated").params, registry)
    assert one(pipelines, registry, req()).shape == (64, 64, 3)


# -- embeddings -------------------------------------------------------------------------


def test_embedding_names_are_whole_words_the_longest_first_case_insensitive() -> None:
    names = ["bad-hands", "bad-hands-5", "ink"]
    assert mentioned_embeddings("pink ink, Bad-Hands-5 and bad-hands", names) == [
        "ink",
        "bad-hands-5",
        "bad-hands",
    ]
    assert mentioned_embeddings("pinky inks (ink:1.2)", names) == ["ink"]
    assert replace_embeddings("an INK pink ink", {"ink": "<t>"}) == "an <t> pink <t>"
    assert replace_embeddings("plain words", {"ink": "<t>"}) == "plain words"


def test_an_embedding_named_in_a_prompt_changes_its_picture_and_no_other(registry: Registry) -> None:
    spec = registry.get("tiny-sd")
    pipelines = PipelineCache(loader=lambda s: load_pipeline(s, CPU)).get(spec)[0]  # nothing loaded yet
    bare = Registry([spec], "tiny-sd")  # no embeddings: their names are plain words
    prompts = {
        "used": req(prompt="a red box inkstyle"),
        "weighted": req(prompt="a red box (inkstyle:1.0)"),  # through compel
        "heavier": req(prompt="a red box (inkstyle:1.6)"),
        "negative": req(negative_prompt="washstyle"),  # the .safetensors (emb_params) format
        "inside": req(prompt="a red box inkstyles"),  # not the word
        "plain": req(prompt="a red box"),
    }
    before = {key: one(pipelines, bare, request) for key, request in prompts.items()}
    after = {key: one(pipelines, registry, request) for key, request in prompts.items()}
    assert loaded_embeddings(pipelines) == ["inkstyle", "washstyle"]
    assert np.abs(after["used"] - before["used"]).max() > 10
    assert np.abs(after["weighted"] - before["weighted"]).max() > 10
    assert np.abs(after["weighted"] - after["used"]).max() <= 1  # weight 1 draws as no weight
    assert np.abs(after["heavier"] - after["used"]).max() > 3
    assert np.abs(after["negative"] - before["negative"]).max() > 3
    # Loaded, they change nothing for prompts that do not name them (not even inside a word).
    assert np.array_equal(after["inside"], before["inside"])
    assert np.array_equal(after["plain"], before["plain"])
    assert embedding_prompt(pipelines.base, "inkstyles and INKSTYLE") == (
        "inkstyles and " + embedding_prompt(pipelines.base, "inkstyle")
    )


@pytest.mark.parametrize("vae", [None, "mse"])
def test_a_job_draws_the_same_alone_and_batched_with_other_prompts_and_embeddings(
    pipelines: ModelPipelines, registry: Registry, vae: str | None
) -> None:
    requests = [
        req(1, "a red box inkstyle", vae=vae),
        req(2, "a blue box", vae=vae),
        req(3, "a green box", negative_prompt="washstyle, blurry", vae=vae),
        req(4, "a (yellow:1.2) box inkstyle", vae=vae),  # weighted: the whole call goes through compel
    ]
    alone = [one(pipelines, registry, request) for request in requests]
    batched = run(pipelines, registry, *requests)
    for single, together in zip(alone, batched, strict=True):
        assert np.abs(single - together).max() <= 1  # float batch noise, as for every batch


def test_an_embedding_that_cannot_load_is_a_model_load_error(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    with pytest.raises(ModelLoadError, match="cannot load embedding 'brokenstyle'"):
        load_embeddings(pipelines, ["a brokenstyle box"], registry)
    assert "brokenstyle" not in loaded_embeddings(pipelines)
    assert one(pipelines, registry, req(prompt="a box")).shape == (64, 64, 3)  # the model keeps serving


def test_an_sdxl_embedding_loads_its_clip_l_and_clip_g_vectors_into_both_encoders(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from easel.worker.engine.tiny_families import save_family_model

    root = tmp_path_factory.mktemp("sdxl-embedding")
    model = save_family_model("sdxl", root / "tiny-sdxl")
    spec = ModelSpec(name="tiny-sdxl", source=ModelSource.DIRECTORY, location=str(model), default_size=64)
    sd_one = build_tiny_embedding(model, root / "sd.safetensors")  # a stand-in with emb_params only
    from safetensors.torch import load_file, save_file

    save_file({"emb_params": load_file(str(sd_one))["clip_l"]}, str(sd_one))
    embeddings = {
        "xlstyle": EmbeddingSpec(
            name="xlstyle", location=str(build_tiny_embedding(model, root / "xl.safetensors")), family="sdxl"
        ),
        "onestyle": EmbeddingSpec(name="onestyle", location=str(sd_one), family="sdxl"),
    }
    registry = Registry([spec], "tiny-sdxl", embeddings=embeddings)
    pipelines = PipelineCache(loader=lambda s: load_pipeline(s, CPU)).get(spec)[0]

    def draw(prompt: str, seed: int = 4) -> GenerationRequest:
        return generation_request(
            model="tiny-sdxl", prompt=prompt, seeds=(seed,), width=64, height=64, steps=3, scheduler="euler"
        )

    plain = one(pipelines, Registry([spec], "tiny-sdxl"), draw("a red box xlstyle"))  # a word: no embeddings
    used = one(pipelines, registry, draw("a red box xlstyle"))
    assert np.abs(used - plain).max() > 3
    tokens = embedding_prompt(pipelines.base, "xlstyle").split()
    for tokenizer in (pipelines.base.tokenizer, pipelines.base.tokenizer_2):
        assert all(token in tokenizer.get_vocab() for token in tokens)
    weighted = one(pipelines, registry, draw("a red box (xlstyle:1.0)"))
    assert np.abs(weighted - used).max() <= 1
    batched = run(pipelines, registry, draw("a red box xlstyle"), draw("a blue box", 5))
    assert np.abs(batched[0] - used).max() <= 1
    with pytest.raises(ModelLoadError, match="takes clip_l and clip_g"):
        load_embeddings(pipelines, ["onestyle"], registry)


# -- the runner ---------------------------------------------------------------------------


@pytest.fixture
def worker_env(env: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    return {**env, "registry": tiny_registry(files)}


def test_a_broken_vae_fails_its_job_with_model_load_error_and_the_next_job_succeeds(
    worker_env: dict[str, Any],
) -> None:
    runner = make_runner(worker_env)
    broken = enqueue(worker_env, width=64, height=64, vae="broken")
    runner.run_next()
    job = fetch(worker_env, broken)
    assert (job.status, job.error_code) == (JobStatus.FAILED.value, "model_load_error")
    # The owner is told which VAE and what to do; the file's path and the library's error
    # are the operator's (the log, and /admin through timings' error_detail).
    assert "VAE 'broken' cannot be loaded on this server" in (job.error_message or "")
    assert str(worker_env["registry"].vaes["broken"].location) not in (job.error_message or "")
    assert "cannot load VAE 'broken'" in job.timings["error_detail"]
    good = enqueue(worker_env, width=64, height=64, vae="mse", prompt="a box inkstyle")
    runner.run_next()
    job = fetch(worker_env, good)
    assert job.status == JobStatus.SUCCEEDED.value, job.error_message
    assert job.vae == "mse"


def test_an_embedding_that_fails_to_load_fails_only_its_own_job_of_a_batch(
    worker_env: dict[str, Any],
) -> None:
    runner = make_runner(worker_env)
    runner.max_batch_images = 4
    ok = enqueue(worker_env, width=64, height=64, prompt="a box washstyle")
    bad = enqueue(worker_env, width=64, height=64, prompt="a box", negative_prompt="brokenstyle")
    runner.run_next()
    good_job, bad_job = fetch(worker_env, ok), fetch(worker_env, bad)
    assert good_job.batch_id == bad_job.batch_id  # claimed together: embeddings are not in the batch key
    assert good_job.status == JobStatus.SUCCEEDED.value, good_job.error_message
    assert (bad_job.status, bad_job.error_code) == (JobStatus.FAILED.value, "model_load_error")


# -- the web tier -----------------------------------------------------------------------

MODELS = """
[models.tiny-sd]
source = "tiny"

[models.other]
source = "tiny"

[models.flowy]
source = "directory"
location = "{flux_dir}"
family = "flux"

[vaes.mse]
location = "/nowhere/mse.safetensors"
family = "sd"

[vaes.kl]
location = "/nowhere/kl.ckpt"
models = ["tiny-sd"]

[vaes.ae]
location = "/nowhere/ae.safetensors"
family = "flux"

[embeddings.inkstyle]
location = "/nowhere/inkstyle.pt"
models = ["tiny-sd"]

[embeddings.washstyle]
location = "/nowhere/washstyle.safetensors"
family = "sd"

[embeddings.fluxstyle]
location = "/nowhere/fluxstyle.safetensors"
family = "flux"

[loras.ink]
location = "/nowhere/ink.safetensors"
family = "sd"

[controlnets.edges]
location = "/nowhere/edges"
family = "sd"
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models.toml"
    models.write_text(MODELS.format(flux_dir=tmp_path / "flux"))
    return migrated_settings(home=tmp_path, auth_enabled=False, models_file=models, default_model="tiny-sd")


def post(client: FlaskClient, **fields: Any) -> Any:
    return client.post("/api/v1/jobs", json={"prompt": "a box", "width": 64, "height": 64, **fields})


def refused(response: Any, field: str) -> str:
    assert response.status_code == 422, response.get_json()
    details = {d["field"]: d["message"] for d in response.get_json()["error"]["details"]}
    assert field in details, details
    return details[field]


def test_the_vae_field_is_recorded_and_bad_names_are_422_naming_vae(client: FlaskClient) -> None:
    job = post(client, vae="mse").get_json()
    assert job["params"]["vae"] == "mse"
    assert "vae" not in post(client).get_json()["params"]  # absent: the model's own
    message = refused(post(client, vae="nope"), "vae")
    assert "unknown VAE 'nope'" in message and "kl, mse" in message  # the ones that fit tiny-sd
    message = refused(post(client, model="other", vae="kl"), "vae")
    assert "does not fit model 'other'" in message and "(it fits models tiny-sd)" in message
    assert post(client, model="other", vae="mse").status_code == 202  # by family
    refused(post(client, vae=""), "vae")
    multipart = client.post(
        "/api/v1/jobs", data={"prompt": "p", "width": "64", "height": "64", "vae": "kl"}
    ).get_json()
    assert multipart["params"]["vae"] == "kl"


def test_an_embedding_that_does_not_fit_the_model_is_422_naming_its_prompt(client: FlaskClient) -> None:
    assert post(client, prompt="a box inkstyle, washstyle").status_code == 202
    assert post(client, prompt="a box inkstyles").status_code == 202  # not the word: no embedding
    message = refused(post(client, model="other", prompt="a box, inkstyle"), "prompt")
    assert "embedding 'inkstyle'" in message and "does not fit model 'other'" in message
    assert "washstyle" in message  # the embeddings that fit, listed
    refused(post(client, model="other", negative_prompt="InkStyle"), "negative_prompt")
    flux = refused(post(client, model="flowy", prompt="a box fluxstyle"), "prompt")
    assert "not flux ones" in flux


def test_adapters_fit_by_family_and_architecture(client: FlaskClient) -> None:
    assert post(client, model="other", loras=[{"name": "ink"}]).status_code == 202
    assert "does not fit model 'flowy'" in refused(
        post(client, model="flowy", loras=[{"name": "ink"}]), "loras"
    )
    spec = AdapterSpec(name="x", location="/x", family="sd", architecture="v2")
    assert spec.fits("m", "sd", "v2") and spec.fits("m", "sd", None) and not spec.fits("m", "sd", "v1")
    assert not spec.fits("m", "sdxl", "v2")
    listed = AdapterSpec(name="y", location="/y", models=("m",), family="sdxl")
    assert listed.fits("m", "sd") and not listed.fits("n", "sdxl")  # listed models win


def test_an_adapter_table_that_says_nothing_of_what_it_fits_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.tiny-sd]\nsource = "tiny"\n\n[embeddings.e]\nlocation = "/e.pt"\n')
    with pytest.raises(ValueError, match=r"\[embeddings\.e\]: say what it fits"):
        load_registry(Settings(home=tmp_path, models_file=models, default_model="tiny-sd"))
    models.write_text('[models.tiny-sd]\nsource = "tiny"\n\n[vaes.v]\nlocation = "/v"\nmodels = ["x"]\n')
    with pytest.raises(ValueError, match="models"):
        load_registry(Settings(home=tmp_path, models_file=models, default_model="tiny-sd"))


def test_a1111_sd_vae_maps_to_the_vae_field() -> None:
    assert job_fields({"prompt": "p", "override_settings": {"sd_vae": "mse"}}, None)["vae"] == "mse"
    assert (
        job_fields({"prompt": "p", "override_settings": {"sd_vae": "mse.safetensors"}}, None)["vae"] == "mse"
    )
    for own in ("Automatic", "None", "automatic"):
        assert "vae" not in job_fields({"prompt": "p", "override_settings": {"sd_vae": own}}, None, vae="kl")
    assert job_fields({"prompt": "p"}, None, vae="kl")["vae"] == "kl"  # the caller's options


def test_a1111_info_names_the_vae() -> None:
    import json

    from easel.shared.models import Job, utcnow
    from easel.web.a1111_map import info

    fields: dict[str, Any] = dict(
        id="j", type="txt2img", status="succeeded", model="tiny-sd", prompt="p", negative_prompt="",
        width=64, height=64, steps=3, guidance_scale=7.0, scheduler="ddim", seed=1, created_at=utcnow(),
    )  # fmt: skip
    described = json.loads(info(Job(**fields, vae="mse", outputs=[])))
    assert described["sd_vae_name"] == "mse" and described["infotexts"][0].endswith("VAE: mse, Seed: 1")
    assert "VAE" not in json.loads(info(Job(**fields, outputs=[])))["infotexts"][0]


def test_a1111_options_keep_sd_vae_and_its_errors_name_it(client: FlaskClient) -> None:
    assert client.get("/sdapi/v1/options").get_json()["sd_vae"] == "Automatic"
    assert client.post("/sdapi/v1/options", json={"sd_vae": "mse.safetensors"}).status_code == 200
    assert client.get("/sdapi/v1/options").get_json()["sd_vae"] == "mse"
    answer = client.post("/sdapi/v1/options", json={"sd_vae": "nope"})
    assert answer.status_code == 422 and answer.get_json()["detail"][0]["loc"] == ["body", "sd_vae"]
    answer = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "p", "width": 64, "height": 64, "override_settings": {"sd_vae": "nope"}},
    )
    assert answer.status_code == 422 and ["body", "sd_vae"] in [d["loc"] for d in answer.get_json()["detail"]]
    assert client.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200
    assert client.get("/sdapi/v1/options").get_json()["sd_vae"] == "Automatic"


def test_the_form_has_a_vae_field_filled_from_an_earlier_job(client: FlaskClient) -> None:
    job = post(client, vae="kl").get_json()
    page = client.get(f"/?from={job['id']}").get_data(as_text=True)
    assert 'name="vae"' in page and 'value="kl"' in page


def test_easel_submit_sends_vae_loras_and_control(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from easel import cli
    from easel.client import EaselApiError, EaselClient

    def through_flask(self: EaselClient, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        files = kwargs.get("files") or {}
        if files:
            data = {**kwargs.get("data", {}), **{k: (io.BytesIO(v[1]), v[0]) for k, v in files.items()}}
            answer = client.open(path, method=method, data=data, content_type="multipart/form-data")
        else:
            answer = client.open(path, method=method, json=kwargs.get("json"))
        if answer.status_code >= 400:
            raise EaselApiError(answer.status_code, answer.get_json())
        body: dict[str, Any] = answer.get_json()
        return body

    monkeypatch.setattr(EaselClient, "_json", through_flask)
    control = tmp_path / "edges.png"
    control.write_bytes(encode(gradient()))
    base = ["submit", "a box inkstyle", "--width", "64", "--height", "64", "--vae", "mse"]
    for extra in (
        [],
        ["--control-model", "edges", "--control-image", str(control), "--control-scale", "0.5"],
    ):
        result = CliRunner().invoke(cli.main, [*base, "--lora", "ink:0.5", "--lora", "ink", *extra])
        assert result.exit_code == 1 and "more than once" in result.output  # validated by the server
        result = CliRunner().invoke(cli.main, [*base, "--lora", "ink:0.5", *extra])
        assert result.exit_code == 0, result.output
        params = client.get(f"/api/v1/jobs/{result.output.strip()}").get_json()["params"]
        assert params["vae"] == "mse" and params["loras"] == [{"name": "ink", "weight": 0.5}]
        assert params.get("control") == ({"model": "edges", "scale": 0.5} if extra else None)
    result = CliRunner().invoke(cli.main, [*base, "--control-model", "edges"])
    assert result.exit_code == 2 and "--control-image" in result.output
