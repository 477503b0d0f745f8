from __future__ import annotations

from pathlib import Path

import pytest

from easel.shared.errors import UnknownModel
from easel.shared.models import JobType
from easel.shared.registry import ModelSource, load_registry
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
