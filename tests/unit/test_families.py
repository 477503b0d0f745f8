"""Model families: the table, reading the family without loading, and validation against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from easel.shared.errors import ValidationFailed
from easel.shared.families import (
    ALL_SCHEDULERS,
    FAMILIES,
    FamilyName,
    family_from_model_index,
    family_of_pipeline,
    get_family,
    hub_snapshot,
)
from easel.shared.registry import ModelSource, ModelSpec, Registry, load_registry
from easel.shared.schemas import parse_job_request, resolve_job
from easel.shared.settings import Settings


def write_index(folder: Path, class_name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def test_every_family_is_consistent() -> None:
    from easel.worker.engine.generate import _SCHEDULER_TABLE

    assert set(FAMILIES) == set(FamilyName)
    for family in FAMILIES.values():
        assert family.default_scheduler in family.schedulers
        assert set(family.schedulers) <= set(ALL_SCHEDULERS) == set(_SCHEDULER_TABLE)
        assert family.default_size % family.size_multiple == 0
        assert all(family_of_pipeline(name) is family for name in family.pipelines)
    flow = {name for name in ALL_SCHEDULERS if name.startswith("flow_")}
    for name in (FamilyName.SD3, FamilyName.FLUX):  # flow matching: flow samplers only
        assert set(get_family(name).schedulers) <= flow
    for name in (FamilyName.SD, FamilyName.SDXL):
        assert not set(get_family(name).schedulers) & flow


def test_family_pipeline_classes_exist_in_diffusers() -> None:
    import diffusers

    for family in FAMILIES.values():
        for name in (*family.pipelines, family.single_file_pipeline or family.pipelines[0]):
            assert hasattr(diffusers, name), name


def test_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model family 'sd4'; known families: sd, sdxl, sd3, flux"):
        get_family("sd4")


def test_family_from_model_index(tmp_path: Path) -> None:
    assert family_from_model_index(tmp_path / "none") is None
    assert family_from_model_index(write_index(tmp_path / "a", "FluxPipeline")).name is FamilyName.FLUX
    assert family_from_model_index(write_index(tmp_path / "b", "StableDiffusionInpaintPipeline")).name == "sd"
    with pytest.raises(ValueError, match="'KandinskyPipeline', which no Easel model family serves"):
        family_from_model_index(write_index(tmp_path / "c", "KandinskyPipeline"))


def test_directory_and_hub_cache_models_read_their_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_index(tmp_path / "xl", "StableDiffusionXLPipeline")
    spec = ModelSpec(name="xl", source=ModelSource.DIRECTORY, location=str(folder))
    assert spec.family is FamilyName.SDXL
    assert (spec.default_size, spec.default_scheduler, spec.default_guidance_scale) == (1024, "euler_a", 6.0)
    # A Hub id in the cache, laid out as huggingface_hub lays it out.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--sd35"
    write_index(repo / "snapshots" / "abc123", "StableDiffusion3Pipeline")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert hub_snapshot("org/sd35") == repo / "snapshots" / "abc123"
    spec = ModelSpec(name="sd35", source=ModelSource.HUGGINGFACE, location="org/sd35")
    assert (spec.family, spec.default_scheduler, spec.default_steps) == (FamilyName.SD3, "flow_euler", 28)


def test_family_key_overrides_and_is_required_for_single_files(tmp_path: Path) -> None:
    folder = write_index(tmp_path / "m", "StableDiffusionPipeline")
    spec = ModelSpec(name="m", source=ModelSource.DIRECTORY, location=str(folder), family="sdxl")
    assert spec.family is FamilyName.SDXL  # the worker checks it against the loaded pipeline
    with pytest.raises(ValueError, match=r"single-file checkpoint has no model_index\.json; set family ="):
        ModelSpec(name="ckpt", source=ModelSource.SINGLE_FILE, location="/m/x.safetensors")
    with pytest.raises(ValueError, match="single-file checkpoints of the flux"):
        ModelSpec(name="ckpt", source=ModelSource.SINGLE_FILE, location="/m/x.safetensors", family="flux")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "family = 'sd3'\ndefault_scheduler = 'euler_a'",
            "default_scheduler 'euler_a' is not one of the sd3",
        ),
        ("family = 'flux'\ndefault_size = 520", "default_size 520 is not a multiple of 16"),
        ("family = 'sd4'", "unknown model family 'sd4'"),
        ("", "cannot tell model 'a''s family: no model_index.json in"),
    ],
)
def test_models_file_family_errors(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(f"[models.a]\nsource = 'directory'\nlocation = '{tmp_path / 'missing'}'\n{table}\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_registry(Settings(home=tmp_path, models_file=path, default_model="a"))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    specs = [
        ModelSpec(name=name, source=ModelSource.DIRECTORY, location=str(tmp_path / name), family=name)
        for name in ("sd", "sdxl", "sd3", "flux")
    ]
    return Registry(specs, "sd")


def resolve(registry: Registry, tmp_path: Path, **fields: object) -> dict[str, str]:
    """The 422's messages by field (empty when the request resolves)."""
    try:
        resolve_job(parse_job_request({"prompt": "p", **fields}), registry, Settings(home=tmp_path))
    except ValidationFailed as exc:
        return {d["field"]: d["message"] for d in exc.details}
    return {}


def test_jobs_take_the_family_defaults(registry: Registry, tmp_path: Path) -> None:
    job = resolve_job(parse_job_request({"prompt": "p", "model": "flux"}), registry, Settings(home=tmp_path))
    assert (job.scheduler, job.guidance_scale, job.width, job.steps) == ("flow_euler", 3.5, 1024, 28)


def test_jobs_outside_the_family_are_refused(registry: Registry, tmp_path: Path) -> None:
    assert set(resolve(registry, tmp_path, model="sd3", scheduler="dpmpp_2m")) == {"scheduler"}
    assert set(resolve(registry, tmp_path, model="sd", scheduler="flow_euler")) == {"scheduler"}
    assert set(resolve(registry, tmp_path, model="flux", width=1000, height=1016)) == {"width", "height"}
    assert resolve(registry, tmp_path, model="sdxl", width=1000) == {}  # SDXL: multiples of 8
    assert set(resolve(registry, tmp_path, model="flux", negative_prompt="x")) == {"negative_prompt"}
    assert resolve(registry, tmp_path, model="sd3", negative_prompt="x", scheduler="flow_heun") == {}
    assert "must be one of" in resolve(registry, tmp_path, scheduler="k_dpm")["scheduler"]


def test_img2img_size_follows_the_family_multiple(registry: Registry, tmp_path: Path) -> None:
    from easel.shared.schemas import JobInputs
    from tests.factories import gradient

    request = parse_job_request({"prompt": "p", "model": "flux", "type": "img2img"})
    job = resolve_job(request, registry, Settings(home=tmp_path), JobInputs(image=gradient(600, 200)))
    assert (job.width, job.height) == (592, 192)  # 600x200 rounded down to multiples of 16
