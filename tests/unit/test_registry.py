from __future__ import annotations

from pathlib import Path

import pytest

from easel.shared.errors import UnknownModel
from easel.shared.models import JobType
from easel.shared.registry import ModelSource, choose_default, load_registry
from easel.shared.settings import Settings


def test_builtin_registry_is_tiny_sd(tmp_path: Path) -> None:
    registry = load_registry(Settings(home=tmp_path))
    spec = registry.get(None)
    assert spec.name == "tiny-sd" and spec.source is ModelSource.TINY
    assert spec.location == str(tmp_path / "models" / "tiny-sd")
    assert (spec.min_size, spec.max_size) == (64, 512)


def test_models_file_maps_names_to_sources(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text("""
[models.sd15]
source = "huggingface"
location = "stable-diffusion-v1-5/stable-diffusion-v1-5"
family = "sd"
max_size = 768
types = ["txt2img"]

[models.local]
source = "directory"
location = "/srv/models/local"
family = "sdxl"

[models.ckpt]
source = "single_file"
location = "/srv/models/v1-5-pruned.safetensors"
config = "/srv/models/sd15-config"
family = "sd"

[models.tiny]
source = "tiny"
""")
    registry = load_registry(Settings(home=tmp_path, models_file=path, default_model="sd15"))
    assert registry.names() == ["ckpt", "local", "sd15", "tiny"]
    assert registry.get(None).max_size == 768
    assert registry.get("ckpt").source is ModelSource.SINGLE_FILE
    assert registry.get("ckpt").config == "/srv/models/sd15-config"
    assert registry.get("tiny").location == str(tmp_path / "models" / "tiny")
    assert registry.get("sd15").types == (JobType.TXT2IMG,)


def test_unknown_model_lists_the_known_ones(tmp_path: Path) -> None:
    registry = load_registry(Settings(home=tmp_path))
    with pytest.raises(UnknownModel, match=r"unknown model 'sdxl'; known models: demo-shapes, tiny-sd"):
        registry.get("sdxl")


def test_default_model_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="default model 'nope'"):
        load_registry(Settings(home=tmp_path, default_model="nope"))


def _tiny_file(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text("".join(f"[models.{name}]\nsource = 'tiny'\n" for name in names))
    return path


def test_a_models_file_without_demo_shapes_defaults_to_its_first_model_by_name(tmp_path: Path) -> None:
    registry = load_registry(Settings(home=tmp_path, models_file=_tiny_file(tmp_path, "zeta", "alpha")))
    assert registry.default == "alpha" and registry.get(None).name == "alpha"


def test_demo_shapes_is_the_default_wherever_it_is_listed(tmp_path: Path) -> None:
    assert choose_default(["zeta", "demo-shapes", "alpha"], None) == "demo-shapes"
    assert choose_default(["zeta", "demo-shapes"], "zeta") == "zeta"
    assert choose_default([], None) is None


def test_an_empty_default_model_variable_means_choose_one(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, models_file=_tiny_file(tmp_path, "b", "a"), default_model="")
    assert settings.default_model is None and load_registry(settings).default == "a"


def test_a_models_folder_replaces_the_builtins_and_waits_for_the_catalog(tmp_path: Path) -> None:
    """EASEL_MODELS_DIR alone: no built-in model; a requested default not published yet is
    not an error at start, only for a job that needs it."""
    registry = load_registry(Settings(home=tmp_path, models_dir=str(tmp_path), default_model="mine"))
    assert registry.names() == [] and registry.default is None
    with pytest.raises(UnknownModel, match="default model 'mine' is not available yet"):
        registry.get(None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[models.a]\nsource = 'directory'\n", "needs a location"),
        ("[models.a]\nsource = 'ftp'\nlocation = 'x'\n", "model 'a'"),
        ("[models.a]\nsource = 'tiny'\nmax_size = 100\n", "multiple of 8"),
        ("[models.a]\nsource = 'tiny'\ncolour = 1\n", "colour"),
        ("title = 'x'\n", "defines no [models.NAME] table"),
        ("[models.a\n", "cannot read models file"),
    ],
)
def test_bad_models_file_is_explained(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_registry(Settings(home=tmp_path, models_file=path, default_model="a"))


@pytest.mark.parametrize(
    ("architecture", "family", "types", "inpainting", "base"),
    [
        ("v1", "sd", {"txt2img", "img2img", "inpaint"}, False, "sd1"),
        ("inpainting", "sd", {"inpaint"}, True, "sd1"),
        ("xl_refiner", "sdxl", {"img2img"}, False, "sdxl-refiner"),
        ("xl_inpaint", "sdxl", {"inpaint"}, True, "sdxl"),
    ],
)
def test_a_single_file_entry_needs_only_its_location(
    tmp_path: Path, architecture: str, family: str, types: set[str], inpainting: bool, base: str
) -> None:
    """Family, job types and base are read from the file's keys; the table may still say them."""
    from tests.model_files import checkpoint, write_safetensors

    path = write_safetensors(tmp_path / f"{architecture}.safetensors", checkpoint(architecture))
    models = tmp_path / "models.toml"
    models.write_text(f"[models.m]\nsource = 'single_file'\nlocation = '{path}'\n")
    spec = load_registry(Settings(home=tmp_path, models_file=models)).get("m")
    assert (spec.family.value, {t.value for t in spec.types}, spec.inpainting, spec.architecture) == (
        family,
        types,
        inpainting,
        base,
    )
    models.write_text(f"[models.m]\nsource = 'single_file'\nlocation = '{path}'\ntypes = ['img2img']\n")
    if not inpainting:  # what the table says wins
        assert load_registry(Settings(home=tmp_path, models_file=models)).get("m").types == (JobType.IMG2IMG,)
