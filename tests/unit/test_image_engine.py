"""img2img and inpaint on the real tiny model: shared weights, masks, strength, seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from easel.shared.models import JobType
from easel.shared.registry import ModelSource, ModelSpec
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.generate import GenerationRequest
from easel.worker.engine.pipelines import ModelPipelines, PipelineCache, load_pipeline
from tests.factories import box_mask, generate_one, generation_request, gradient

CPU = DevicePlan("cpu", "float32")


@pytest.fixture(scope="module")
def cache(tiny_model: Path) -> PipelineCache:
    return PipelineCache(loader=lambda spec: load_pipeline(spec, CPU))


@pytest.fixture(scope="module")
def pipelines(cache: PipelineCache, tiny_model: Path) -> ModelPipelines:
    spec = ModelSpec(
        name="tiny-sd", source=ModelSource.DIRECTORY, location=str(tiny_model), default_size=256, max_size=512
    )
    return cache.get(spec)[0]


def request(job_type: JobType, **overrides: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "prompt": "a painted box",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 6,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "seeds": (5,),
        "type": job_type,
        "image": gradient(),
        "strength": 0.8,
    }
    if job_type is JobType.INPAINT:
        fields.update(mask=box_mask(), strength=1.0, mask_blur=0)
    return generation_request(**{**fields, **overrides})


def px(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_job_types_share_one_set_of_weights(pipelines: ModelPipelines, cache: PipelineCache) -> None:
    base = pipelines.for_type(JobType.TXT2IMG)
    for job_type in (JobType.IMG2IMG, JobType.INPAINT):
        pipe = pipelines.for_type(job_type)
        assert pipe is not base
        assert pipe.unet is base.unet and pipe.vae is base.vae and pipe.text_encoder is base.text_encoder
        assert pipelines.for_type(job_type) is pipe  # made once
    assert type(pipelines.for_type(JobType.IMG2IMG)).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(pipelines.for_type(JobType.INPAINT)).__name__ == "StableDiffusionInpaintPipeline"
    assert cache.loads == {"tiny-sd": 1}


def test_img2img_runs_strength_steps_and_keeps_the_size(pipelines: ModelPipelines) -> None:
    seen: list[tuple[int, int]] = []
    out = generate_one(
        pipelines.for_type(JobType.IMG2IMG),
        request(JobType.IMG2IMG, steps=10, strength=0.5),
        lambda step, total: seen.append((step, total)),
    )
    assert out[0].size == (64, 64)
    assert seen[-1] == (5, 5)  # 10 steps at strength 0.5


def test_strength_changes_the_result(pipelines: ModelPipelines) -> None:
    pipe = pipelines.for_type(JobType.IMG2IMG)
    weak = px(generate_one(pipe, request(JobType.IMG2IMG, strength=0.3))[0])
    strong = px(generate_one(pipe, request(JobType.IMG2IMG, strength=0.9))[0])
    source = px(gradient())
    assert np.abs(weak - strong).mean() > 1.0
    assert np.abs(weak - source).mean() < np.abs(strong - source).mean()


@pytest.mark.parametrize("job_type", [JobType.IMG2IMG, JobType.INPAINT])
def test_same_seed_same_pixels(pipelines: ModelPipelines, job_type: JobType) -> None:
    pipe = pipelines.for_type(job_type)
    first, again = (px(generate_one(pipe, request(job_type))[0]) for _ in range(2))
    other = px(generate_one(pipe, request(job_type, seeds=(6,)))[0])
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 0.5


def test_inpaint_keeps_unmasked_pixels_exactly(pipelines: ModelPipelines) -> None:
    out = px(generate_one(pipelines.for_type(JobType.INPAINT), request(JobType.INPAINT))[0])
    source, mask = px(gradient()), np.asarray(box_mask()) > 0
    assert np.array_equal(out[~mask], source[~mask])
    assert np.abs(out[mask] - source[mask]).mean() > 5  # the masked box was repainted


def test_inpaint_feather_blends_only_near_the_edge(pipelines: ModelPipelines) -> None:
    out = px(generate_one(pipelines.for_type(JobType.INPAINT), request(JobType.INPAINT, mask_blur=3))[0])
    source = px(gradient())
    far = np.ones((64, 64), bool)
    far[16 - 9 : 48 + 9, 16 - 9 : 48 + 9] = False  # more than 3 blur radii from the box
    assert np.array_equal(out[far], source[far])
    ring = np.zeros((64, 64), bool)
    ring[14:50, 14:50] = True
    ring[16:48, 16:48] = False
    assert np.abs(out[ring] - source[ring]).max() > 0  # the seam is softened


def test_all_black_mask_returns_the_input(pipelines: ModelPipelines) -> None:
    black = box_mask(box=(0, 0, 0, 0))
    out = px(generate_one(pipelines.for_type(JobType.INPAINT), request(JobType.INPAINT, mask=black))[0])
    assert np.array_equal(out, px(gradient()))


def test_keep_unmasked_off_lets_the_model_touch_everything(pipelines: ModelPipelines) -> None:
    out = px(
        generate_one(pipelines.for_type(JobType.INPAINT), request(JobType.INPAINT, keep_unmasked=False))[0]
    )
    mask = np.asarray(box_mask()) > 0
    assert not np.array_equal(out[~mask], px(gradient())[~mask])


def test_a_dedicated_inpainting_checkpoint_works(tmp_path: Path) -> None:
    spec = ModelSpec(
        name="tiny-inpaint",
        source=ModelSource.TINY,
        location=str(tmp_path / "ti"),
        inpainting=True,
        types=(JobType.INPAINT,),
    )
    pipelines = PipelineCache(loader=lambda s: load_pipeline(s, CPU)).get(spec)[0]
    pipe = pipelines.for_type(JobType.INPAINT)
    assert pipe.unet.config.in_channels == 9
    out = px(generate_one(pipe, request(JobType.INPAINT))[0])
    mask = np.asarray(box_mask()) > 0
    assert np.array_equal(out[~mask], px(gradient())[~mask])
    with pytest.raises(ValueError, match="does not serve txt2img"):
        pipelines.for_type(JobType.TXT2IMG)
