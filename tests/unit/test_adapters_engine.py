"""LoRA, ControlNet and prompt weighting on the real tiny model (tests/adapter_models.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from easel.shared.adapters import ControlNetSpec, ControlRef, LoraRef, LoraSpec
from easel.shared.errors import ModelLoadError
from easel.shared.models import JobType
from easel.shared.registry import ModelSource, ModelSpec, Registry
from easel.worker.engine.adapters import loaded_loras, pipeline_for, prepare_control
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.generate import GenerationRequest, generate_batch
from easel.worker.engine.pipelines import ModelPipelines, PipelineCache, load_pipeline, weight_bytes
from tests.factories import generation_request, gradient

CPU = DevicePlan("cpu", "float32")


@pytest.fixture(scope="module")
def registry(tiny_model: Path, tiny_lora: Path, tiny_controlnet: Path, tmp_path_factory: Any) -> Registry:
    spec = ModelSpec(name="tiny-sd", source=ModelSource.DIRECTORY, location=str(tiny_model), default_size=64)
    broken = tmp_path_factory.mktemp("broken") / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    return Registry(
        [spec],
        "tiny-sd",
        loras={
            "ink": LoraSpec(name="ink", location=str(tiny_lora), models=("tiny-sd",)),
            "broken": LoraSpec(name="broken", location=str(broken), models=("tiny-sd",)),
        },
        controlnets={
            "edges": ControlNetSpec(
                name="edges", location=str(tiny_controlnet), models=("tiny-sd",), preprocessor="canny"
            )
        },
    )


@pytest.fixture(scope="module")
def pipelines(registry: Registry) -> ModelPipelines:
    return PipelineCache(loader=lambda spec: load_pipeline(spec, CPU)).get(registry.get("tiny-sd"))[0]


def run(pipelines: ModelPipelines, registry: Registry, *requests: GenerationRequest) -> list[list[Any]]:
    pipe = pipeline_for(pipelines, requests[0].params, registry)
    return generate_batch(pipe, list(requests))


def req(seed: int = 3, prompt: str = "a red box", **fields: Any) -> GenerationRequest:
    request = generation_request(prompt=prompt, seeds=(seed,), width=64, height=64, steps=3, **fields)
    if request.params.control is not None:
        return GenerationRequest(request.params, control=prepare_control(gradient(), "canny"))
    return request


def px(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_lora_weight_zero_draws_as_without_and_weight_one_changes_the_picture(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    plain = px(run(pipelines, registry, req())[0][0])
    zero = px(run(pipelines, registry, req(loras=(LoraRef(name="ink", weight=0.0),)))[0][0])
    one = px(run(pipelines, registry, req(loras=(LoraRef(name="ink", weight=1.0),)))[0][0])
    after = px(run(pipelines, registry, req())[0][0])  # LoRA switched off again after its call
    assert np.array_equal(plain, zero)
    assert np.abs(one - plain).max() > 10
    assert np.array_equal(plain, after)
    assert loaded_loras(pipelines) == ["ink"]  # loaded once, kept warm
    lora_bytes = sum(p.numel() * 4 for name, p in pipelines.base.unet.named_parameters() if "lora_" in name)
    assert lora_bytes > 0 and pipelines.bytes == weight_bytes(pipelines.base)  # the cache's budget sees them


def test_kohya_and_peft_files_draw_as_the_diffusers_file(
    pipelines: ModelPipelines, registry: Registry, tiny_lora: Path, tmp_path: Path
) -> None:
    """The formats found in people's folders: kohya's sd-scripts and PEFT's own naming (which
    diffusers alone would load as nothing) draw the same pixels as the diffusers file."""
    from tests.adapter_models import write_kohya_lora, write_peft_lora

    files = {
        "as-kohya": write_kohya_lora(tiny_lora, tmp_path / "kohya.safetensors"),
        "as-peft": write_peft_lora(tiny_lora, tmp_path / "peft.safetensors"),
    }
    loras = {
        name: LoraSpec(name=name, location=str(path), models=("tiny-sd",)) for name, path in files.items()
    }
    both = Registry([registry.get("tiny-sd")], "tiny-sd", loras={**registry.loras, **loras})
    drawn = {
        name: px(run(pipelines, both, req(loras=(LoraRef(name=name, weight=0.7),)))[0][0])
        for name in ("ink", *files)
    }
    assert np.abs(drawn["as-kohya"] - drawn["ink"]).max() <= 1
    assert np.abs(drawn["as-peft"] - drawn["ink"]).max() <= 1


def test_a_lora_that_matches_no_layer_fails_instead_of_drawing_without_it(
    pipelines: ModelPipelines, registry: Registry, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"unet.no_such_block.to_q.lora_A.weight": torch.zeros(4, 8)}, str(path))
    stray = Registry(
        [registry.get("tiny-sd")],
        "tiny-sd",
        loras={"stray": LoraSpec(name="stray", location=str(path), models=("tiny-sd",))},
    )
    with pytest.raises(ModelLoadError, match="stray"):
        run(pipelines, stray, req(loras=(LoraRef(name="stray", weight=1.0),)))


def test_lora_pixels_are_the_same_alone_and_batched(pipelines: ModelPipelines, registry: Registry) -> None:
    loras = (LoraRef(name="ink", weight=0.7),)
    alone = [run(pipelines, registry, req(seed, loras=loras))[0][0] for seed in (1, 2)]
    batch = run(pipelines, registry, req(1, loras=loras), req(2, prompt="a blue box", loras=loras))
    assert np.abs(px(batch[0][0]) - px(alone[0])).max() <= 1
    other = px(run(pipelines, registry, req(2, prompt="a blue box", loras=loras))[0][0])
    assert np.abs(px(batch[1][0]) - other).max() <= 1


def test_adapters_are_part_of_the_batch_key(pipelines: ModelPipelines, registry: Registry) -> None:
    a, b = req(loras=(LoraRef(name="ink", weight=0.5),)), req(loras=(LoraRef(name="ink", weight=0.6),))
    assert a.params.batch_key() != b.params.batch_key()
    with pytest.raises(ValueError, match="must share"):
        generate_batch(pipelines.for_type(JobType.TXT2IMG), [a, b])
    c = req(control=ControlRef(model="edges", scale=1.0))
    assert c.params.batch_key() != req(control=ControlRef(model="edges", scale=0.5)).params.batch_key()


def test_controlnet_scale_zero_draws_the_plain_picture(pipelines: ModelPipelines, registry: Registry) -> None:
    plain = px(run(pipelines, registry, req())[0][0])
    zero = px(run(pipelines, registry, req(control=ControlRef(model="edges", scale=0.0)))[0][0])
    full = px(run(pipelines, registry, req(control=ControlRef(model="edges", scale=1.0)))[0][0])
    assert np.abs(zero - plain).max() <= 1
    assert np.abs(full - plain).max() > 10
    control_pipe = pipeline_for(pipelines, req(control=ControlRef(model="edges")).params, registry)
    assert control_pipe.unet is pipelines.base.unet  # from_pipe: the base weights are shared


def test_a_single_file_controlnet_draws_as_its_diffusers_folder(
    pipelines: ModelPipelines, registry: Registry, tiny_controlnet: Path, tmp_path: Path
) -> None:
    """A1111's models/ControlNet holds files in the original layout (control_model.*): read
    with a config shaped like the model's own UNet, nothing fetched."""
    from diffusers import ControlNetModel

    from easel.shared.classify import Kind, classify
    from easel.shared.weights_header import read_header
    from tests.ldm_convert import controlnet_to_ldm, save_ldm

    controlnet = ControlNetModel.from_pretrained(str(tiny_controlnet))
    path = save_ldm(controlnet_to_ldm(controlnet), tmp_path / "edges.safetensors")
    assert classify(read_header(path)).kind is Kind.CONTROLNET
    single = ControlNetSpec(name="edges-file", location=str(path), models=("tiny-sd",), preprocessor="canny")
    both = Registry(
        [registry.get("tiny-sd")], "tiny-sd", controlnets={**registry.controlnets, "edges-file": single}
    )
    folder = px(run(pipelines, both, req(control=ControlRef(model="edges", scale=1.0)))[0][0])
    file = px(run(pipelines, both, req(control=ControlRef(model="edges-file", scale=1.0)))[0][0])
    assert np.abs(file - folder).max() <= 1


def test_controlnet_drives_img2img(pipelines: ModelPipelines, registry: Registry) -> None:
    params = dict(type=JobType.IMG2IMG, strength=0.8, control=ControlRef(model="edges", scale=1.0))
    request = req(**params)
    request = GenerationRequest(request.params, image=gradient(), control=request.control)
    (image,) = run(pipelines, registry, request)[0]
    assert image.size == (64, 64)


def test_lora_and_controlnet_in_one_call(pipelines: ModelPipelines, registry: Registry) -> None:
    control = ControlRef(model="edges", scale=1.0)
    alone = px(run(pipelines, registry, req(control=control))[0][0])
    zero = px(run(pipelines, registry, req(control=control, loras=(LoraRef(name="ink", weight=0.0),)))[0][0])
    assert np.array_equal(alone, zero)


def test_weighted_prompt_changes_the_picture_and_weight_one_does_not(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    plain = px(run(pipelines, registry, req(prompt="a red box"))[0][0])
    same = px(run(pipelines, registry, req(prompt="a (red:1.0) box"))[0][0])
    heavy = px(run(pipelines, registry, req(prompt="a (red box:2.0)"))[0][0])
    assert np.abs(same - plain).max() <= 1  # compel at weight 1 encodes as the pipeline does
    assert np.abs(heavy - plain).max() > 3  # random text weights barely steer; above batch noise (1)


def test_a_lora_that_cannot_load_is_a_model_load_error_and_the_model_keeps_serving(
    pipelines: ModelPipelines, registry: Registry
) -> None:
    with pytest.raises(ModelLoadError, match="cannot load LoRA 'broken'"):
        pipeline_for(pipelines, req(loras=(LoraRef(name="broken"),)).params, registry)
    assert "broken" not in loaded_loras(pipelines)
    assert run(pipelines, registry, req())[0][0].size == (64, 64)


def test_canny_preprocessor_draws_edges() -> None:
    edges = np.asarray(prepare_control(gradient(), "canny"))
    assert set(np.unique(edges)) <= {0, 255}
