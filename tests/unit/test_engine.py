"""The generation engine on the real tiny model: build, load, cache, cancel."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from easel.shared.registry import SCHEDULERS, ModelSource, ModelSpec
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.generate import (
    GenerationRequest,
    JobCanceled,
    make_scheduler,
    with_scheduler,
)
from easel.worker.engine.pipelines import PipelineCache, load_pipeline
from easel.worker.engine.tiny_model import ensure_tiny_model
from tests.factories import generate_one, generation_request

CPU = DevicePlan("cpu", "float32")


def spec_for(folder: Path, name: str = "tiny-sd") -> ModelSpec:
    return ModelSpec(
        name=name, source=ModelSource.DIRECTORY, location=str(folder), default_size=256, max_size=512
    )


@pytest.fixture(scope="module")
def pipe(tiny_model: Path) -> Any:
    return load_pipeline(spec_for(tiny_model), CPU)


def request(**overrides: Any) -> GenerationRequest:
    """``tests.factories.DEFAULT_PARAMS`` (seed 11, one image) with ``overrides``."""
    return generation_request(**{"seeds": (11,), **overrides})


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_tiny_model_is_deterministic_and_sd_shaped(tiny_model: Path, tmp_path: Path) -> None:
    again = ensure_tiny_model(tmp_path / "tiny-sd")
    assert _digest(again) == _digest(tiny_model) and len(_digest(again)) == 3
    total = sum(p.stat().st_size for p in again.rglob("*") if p.is_file())
    assert total < 20 * 1024 * 1024
    pipe = load_pipeline(spec_for(again), CPU)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.tokenizer).__name__.startswith("CLIPTokenizer")
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.in_channels == 4


def test_tiny_source_builds_on_first_load(tmp_path: Path) -> None:
    spec = ModelSpec(name="t", source=ModelSource.TINY, location=str(tmp_path / "t"))
    pipe = load_pipeline(spec, CPU)
    assert (tmp_path / "t" / "model_index.json").exists()
    assert pipe.device.type == "cpu"


def test_missing_local_model_is_a_clear_load_error(tmp_path: Path) -> None:
    from easel.shared.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"cannot load model 'gone' \(directory"):
        load_pipeline(
            ModelSpec(
                name="gone", source=ModelSource.DIRECTORY, location=str(tmp_path / "nowhere"), family="sd"
            ),
            CPU,
        )


def test_offline_hub_id_fails_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from easel.shared.errors import ModelLoadError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = ModelSpec(name="sd", source=ModelSource.HUGGINGFACE, location="org/not-cached", family="sd")
    with pytest.raises(ModelLoadError, match="cannot load model 'sd' \\(huggingface"):
        load_pipeline(spec, CPU, offline=True)


def test_cache_loads_each_model_once_and_evicts_lru(tiny_model: Path) -> None:
    calls: list[str] = []

    def loader(spec: ModelSpec) -> object:
        calls.append(spec.name)
        return object()

    cache = PipelineCache(loader=loader, max_models=1)
    a, b = spec_for(tiny_model, "a"), spec_for(tiny_model, "b")
    first, load_seconds = cache.get(a)
    second, warm_seconds = cache.get(a)
    assert first is second and warm_seconds == 0.0 and load_seconds >= 0
    cache.get(b)
    assert cache.loaded() == ["b"]
    cache.get(a)
    assert calls == ["a", "b", "a"] and cache.loads == {"a": 2, "b": 1}


def test_same_seed_same_pixels_other_seed_differs(pipe: Any) -> None:
    first = generate_one(pipe, request())[0]
    again = generate_one(pipe, request())[0]
    other = generate_one(pipe, request(seeds=(12,)))[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_multi_image_call_matches_single_images(pipe: Any) -> None:
    batch = generate_one(pipe, request(seeds=(5, 6)))
    singles = [generate_one(pipe, request(seeds=(seed,)))[0] for seed in (5, 6)]
    for batched, single in zip(batch, singles, strict=True):
        assert np.abs(pixels(batched) - pixels(single)).max() <= 1


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_runs(pipe: Any, name: str) -> None:
    image = generate_one(pipe, request(scheduler=name, steps=3, width=64, height=72))[0]
    assert image.size == (64, 72)
    assert pixels(image).std() > 0


def test_each_call_gets_its_own_scheduler_and_shares_weights(pipe: Any) -> None:
    original = pipe.scheduler
    view = with_scheduler(pipe, make_scheduler("ddim", pipe.scheduler.config))
    assert view.unet is pipe.unet and view.vae is pipe.vae and view.text_encoder is pipe.text_encoder
    assert type(view.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler is original


def test_scheduler_view_keeps_half_precision(tiny_model: Path) -> None:
    """``from_pipe`` would cast the shared modules to float32; our view must not."""
    import torch

    half = load_pipeline(spec_for(tiny_model), DevicePlan("cpu", "float16"))
    view = with_scheduler(half, make_scheduler("euler", half.scheduler.config))
    assert half.unet.dtype == torch.float16 and view.unet.dtype == torch.float16


def test_step_callback_reports_progress_and_can_stop(pipe: Any) -> None:
    seen: list[tuple[int, int]] = []

    def on_step(step: int, total: int) -> None:
        seen.append((step, total))
        if step == 3:
            raise JobCanceled("stop")

    with pytest.raises(JobCanceled):
        generate_one(pipe, request(steps=10), on_step)
    assert seen == [(1, 10), (2, 10), (3, 10)]
