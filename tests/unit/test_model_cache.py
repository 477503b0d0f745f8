"""The warm multi-model cache: LRU under a model count and a weight-byte budget, on the real tiny model."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from easel.shared.models import JobType
from easel.shared.registry import ModelSource, ModelSpec
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.generate import GenerationRequest
from easel.worker.engine.pipelines import PipelineCache, load_pipeline, weight_bytes
from tests.factories import generate_one, generation_request

CPU = DevicePlan("cpu", "float32")


def spec_for(folder: Path, name: str) -> ModelSpec:
    return ModelSpec(name=name, source=ModelSource.DIRECTORY, location=str(folder), default_size=256)


class Recorder:
    """A loader that loads the real tiny model and records what was loaded when."""

    def __init__(self) -> None:
        self.cache: PipelineCache | None = None
        self.calls: list[tuple[str, list[str]]] = []  # (model, models loaded at that moment)

    def __call__(self, spec: ModelSpec) -> Any:
        assert self.cache is not None
        self.calls.append((spec.name, self.cache.loaded()))
        return load_pipeline(spec, CPU)


def make_cache(max_models: int = 1, max_bytes: int = 0) -> tuple[PipelineCache, Recorder]:
    recorder = Recorder()
    cache = PipelineCache(loader=recorder, max_models=max_models, max_bytes=max_bytes)
    recorder.cache = cache
    return cache, recorder


@pytest.fixture(scope="module")
def model_bytes(tiny_model: Path) -> int:
    return weight_bytes(load_pipeline(spec_for(tiny_model, "probe"), CPU))


def request() -> GenerationRequest:
    return generation_request(prompt="a red fox", steps=2, seeds=(3,))  # 64x64, euler (the defaults)


def switch_a_b_a(cache: PipelineCache, folder: Path) -> None:
    """A, B, A; while B loads, the evicted A must be garbage: its weights and its img2img view."""
    a, b = spec_for(folder, "a"), spec_for(folder, "b")
    first, _ = cache.get(a)
    unet = weakref.ref(first.base.unet)
    img2img = weakref.ref(first.for_type(JobType.IMG2IMG))
    cache.get(b)
    assert cache.loaded() == ["b"]
    # Even with a caller still holding A's ModelPipelines, eviction released everything.
    assert first.base is None and unet() is None and img2img() is None
    cache.get(a)
    assert cache.loaded() == ["a"] and cache.loads == {"a": 2, "b": 1}


def test_weight_bytes_sum_parameters_and_buffers_of_the_modules(tiny_model: Path, model_bytes: int) -> None:
    pipe = load_pipeline(spec_for(tiny_model, "x"), CPU)
    expected = sum(
        t.numel() * t.element_size()
        for module in (pipe.unet, pipe.vae, pipe.text_encoder)
        for t in (*module.parameters(), *module.buffers())
    )
    assert model_bytes == expected and 5_000_000 < expected < 20_000_000  # tiny-sd in float32: ~10 MB
    assert weight_bytes(object()) == 0


def test_budget_of_one_model_evicts_lru_and_frees_it(tiny_model: Path, model_bytes: int) -> None:
    cache, recorder = make_cache(max_models=1)
    switch_a_b_a(cache, tiny_model)
    assert cache.bytes_loaded() == model_bytes
    # Count budget: the old model is always out before the new one loads.
    assert recorder.calls == [("a", []), ("b", []), ("a", [])]


def test_byte_budget_that_fits_one_model_behaves_the_same(tiny_model: Path, model_bytes: int) -> None:
    cache, recorder = make_cache(max_models=5, max_bytes=model_bytes + model_bytes // 2)
    switch_a_b_a(cache, tiny_model)
    assert cache.bytes_loaded() == model_bytes
    # B's size is unknown before its first load, so A is evicted after it; A's size is
    # known from its first load, so B is evicted before A loads again.
    assert recorder.calls == [("a", []), ("b", ["a"]), ("a", [])]


def test_byte_budget_that_fits_two_keeps_both_warm(tiny_model: Path, model_bytes: int) -> None:
    cache, recorder = make_cache(max_models=2, max_bytes=2 * model_bytes)
    a, b = spec_for(tiny_model, "a"), spec_for(tiny_model, "b")
    pipes_a, _ = cache.get(a)
    pipes_b, _ = cache.get(b)
    for spec, pipes in [(a, pipes_a), (b, pipes_b), (a, pipes_a), (b, pipes_b)]:
        again, seconds = cache.get(spec)
        assert again is pipes and seconds == 0.0
    assert cache.loads == {"a": 1, "b": 1} and len(recorder.calls) == 2
    assert cache.bytes_loaded() == 2 * model_bytes and cache.loaded() == ["a", "b"]


def test_jobs_on_a_warm_model_never_load_it_again(tiny_model: Path) -> None:
    cache, _ = make_cache(max_models=1)
    spec = spec_for(tiny_model, "a")
    for _ in range(3):
        pipes, _ = cache.get(spec)
        [image] = generate_one(pipes.for_type(JobType.TXT2IMG), request())
        assert image.size == (64, 64)
    assert cache.loads == {"a": 1}


class FakePipe:
    """A pipeline-shaped object whose weights are ``floats`` float32 values."""

    def __init__(self, floats: int) -> None:
        self.components = {"unet": torch.nn.Linear(floats, 1, bias=False), "tokenizer": object()}


def test_a_model_alone_over_the_byte_budget_stays_loaded(caplog: pytest.LogCaptureFixture) -> None:
    sizes = {"small": 10, "big": 100}
    cache = PipelineCache(loader=lambda spec: FakePipe(sizes[spec.name]), max_models=3, max_bytes=200)
    small = ModelSpec(name="small", source=ModelSource.TINY)
    big = ModelSpec(name="big", source=ModelSource.TINY)
    cache.get(small)
    assert cache.bytes_loaded() == 40
    with caplog.at_level(logging.WARNING, logger="easel.worker.engine.pipelines"):
        cache.get(big)
    assert cache.loaded() == ["big"] and cache.bytes_loaded() == 400
    assert "over max_bytes 200" in caplog.text


def test_budgets_are_checked() -> None:
    with pytest.raises(ValueError, match="max_models must be at least 1, got 0"):
        PipelineCache(loader=FakePipe, max_models=0)
    with pytest.raises(ValueError, match="got -1"):
        PipelineCache(loader=FakePipe, max_bytes=-1)
