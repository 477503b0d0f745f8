"""LoRA, ControlNet and prompt weighting on a tiny random SDXL pipeline
(worker/engine/tiny_families.py): two text encoders, a pooled embedding, time ids."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from easel.shared.adapters import ControlNetSpec, ControlRef, LoraRef, LoraSpec
from easel.shared.models import JobType
from easel.shared.registry import ModelSource, ModelSpec, Registry
from easel.worker.engine.adapters import pipeline_for, prepare_control
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.generate import GenerationRequest, generate_batch
from easel.worker.engine.pipelines import ModelPipelines, PipelineCache, load_pipeline
from easel.worker.engine.weighting import weighted_embeddings
from tests.adapter_models import build_tiny_controlnet, build_tiny_lora
from tests.factories import generation_request, gradient

CPU = DevicePlan("cpu", "float32")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    from easel.worker.engine.tiny_families import save_family_model

    root = tmp_path_factory.mktemp("sdxl")
    model = save_family_model("sdxl", root / "tiny-sdxl")
    spec = ModelSpec(name="tiny-sdxl", source=ModelSource.DIRECTORY, location=str(model), default_size=64)
    return Registry(
        [spec],
        "tiny-sdxl",
        loras={
            "ink": LoraSpec(
                name="ink", location=str(build_tiny_lora(model, root / "lora")), models=("tiny-sdxl",)
            )
        },
        controlnets={
            "map": ControlNetSpec(
                name="map", location=str(build_tiny_controlnet(model, root / "cn")), models=("tiny-sdxl",)
            )
        },
    )


@pytest.fixture(scope="module")
def pipelines(registry: Registry) -> ModelPipelines:
    return PipelineCache(loader=lambda spec: load_pipeline(spec, CPU)).get(registry.get("tiny-sdxl"))[0]


def draw(
    pipelines: ModelPipelines, registry: Registry, prompt: str = "a red box", **fields: Any
) -> np.ndarray:
    request = generation_request(
        model="tiny-sdxl",
        prompt=prompt,
        seeds=(4,),
        width=64,
        height=64,
        steps=3,
        scheduler="euler",
        **fields,
    )
    control = prepare_control(gradient(), "none") if request.params.control is not None else None
    image = gradient() if request.params.type is not JobType.TXT2IMG else None
    request = GenerationRequest(request.params, image=image, control=control)
    (out,) = generate_batch(pipeline_for(pipelines, request.params, registry), [request])[0]
    return np.asarray(out.convert("RGB"), dtype=np.int16)


def test_sdxl_lora_weights(pipelines: ModelPipelines, registry: Registry) -> None:
    plain = draw(pipelines, registry)
    assert np.array_equal(draw(pipelines, registry, loras=(LoraRef(name="ink", weight=0.0),)), plain)
    assert np.abs(draw(pipelines, registry, loras=(LoraRef(name="ink", weight=1.5),)) - plain).max() > 10


def test_sdxl_controlnet_scale_zero_is_plain_and_img2img_runs(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    plain = draw(pipelines, registry)
    assert np.abs(draw(pipelines, registry, control=ControlRef(model="map", scale=0.0)) - plain).max() <= 1
    assert np.abs(draw(pipelines, registry, control=ControlRef(model="map", scale=1.0)) - plain).max() > 10
    image2image = draw(
        pipelines, registry, type=JobType.IMG2IMG, strength=0.8, control=ControlRef(model="map", scale=1.0)
    )
    assert image2image.shape == (64, 64, 3)


def test_sdxl_prompt_weighting(pipelines: ModelPipelines, registry: Registry) -> None:
    plain = draw(pipelines, registry, prompt="a red box")
    assert np.abs(draw(pipelines, registry, prompt="a (red:1.0) box") - plain).max() <= 1
    assert np.abs(draw(pipelines, registry, prompt="a (red box:2.0)") - plain).max() > 1
    # The tiny random encoders barely steer the pixels; the embeddings show the weight.
    plain_embeds = weighted_embeddings(pipelines.base, ["a red box"], [""])
    heavy_embeds = weighted_embeddings(pipelines.base, ["a (red box:2.0)"], [""])
    assert (heavy_embeds["prompt_embeds"] - plain_embeds["prompt_embeds"]).abs().max() > 0.1
    assert heavy_embeds["pooled_prompt_embeds"].equal(
        plain_embeds["pooled_prompt_embeds"]
    )  # pooled: unweighted
