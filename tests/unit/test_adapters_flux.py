"""A LoRA on a tiny random Flux pipeline (worker/engine/tiny_families.py): loaded into the
transformer, weight 0 draws as without it."""

from __future__ import annotations

import numpy as np
import pytest

from easel.shared.adapters import LoraRef, LoraSpec
from easel.shared.registry import ModelSource, ModelSpec, Registry
from easel.worker.engine.adapters import pipeline_for
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.generate import generate_batch
from easel.worker.engine.pipelines import PipelineCache, load_pipeline
from tests.adapter_models import build_tiny_lora
from tests.factories import generation_request


def test_flux_lora_weight_zero_draws_as_without_it(tmp_path_factory: pytest.TempPathFactory) -> None:
    from easel.worker.engine.tiny_families import save_family_model

    root = tmp_path_factory.mktemp("flux")
    model = save_family_model("flux", root / "tiny-flux")
    lora = LoraSpec(name="ink", location=str(build_tiny_lora(model, root / "lora")), models=("tiny-flux",))
    spec = ModelSpec(name="tiny-flux", source=ModelSource.DIRECTORY, location=str(model), default_size=64)
    registry = Registry([spec], "tiny-flux", loras={"ink": lora})
    pipelines = PipelineCache(loader=lambda s: load_pipeline(s, DevicePlan("cpu", "float32"))).get(spec)[0]

    def draw(*loras: LoraRef) -> np.ndarray:
        request = generation_request(
            model="tiny-flux", seeds=(2,), steps=2, guidance_scale=3.5, scheduler="flow_euler", loras=loras
        )
        (image,) = generate_batch(pipeline_for(pipelines, request.params, registry), [request])[0]
        return np.asarray(image.convert("RGB"), dtype=np.int16)

    plain = draw()
    assert np.array_equal(draw(LoraRef(name="ink", weight=0.0)), plain)
    assert np.abs(draw(LoraRef(name="ink", weight=2.0)) - plain).max() > 2
    assert np.array_equal(draw(), plain)  # off again after the LoRA's call
