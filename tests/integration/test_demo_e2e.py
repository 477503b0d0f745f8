"""What a job asks for reaches the model: real web and worker processes serving the demo
model ``demo-shapes`` on the embedded defaults, judged by what the pictures show."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.processes import Stack
from tests.factories import b64, make_stack
from tools.demo_model.evaluate import blue_picture_and_mask, centre_colour
from tools.demo_model.world import Scene, judge, render

pytestmark = pytest.mark.slow

# One job each, queued before any worker runs, so the worker's first claim takes them
# as one batch (EASEL_MAX_BATCH_SIZE=4).
BATCH_PROMPTS = [
    "a red circle on a white background",
    "a green square on a black background",
    "a blue triangle on a yellow background",
    "a yellow circle on a blue background",
]
PROMPTS = [
    "a red circle on a green background",
    "a white triangle on a black background",
    "a blue circle on a white background",
    "a black triangle on a yellow background",
]


@dataclass
class Demo:
    stack: Stack
    batch_ids: list[str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Demo]:
    env = {"EASEL_AUTH_ENABLED": "false", "EASEL_DEFAULT_MODEL": "demo-shapes", "EASEL_MAX_BATCH_SIZE": "4"}
    stack = make_stack(tmp_path_factory.mktemp("demo-stack"), tiny_model, env)
    try:
        stack.start_web()
        batch_ids = [stack.submit(prompt=prompt, seed=5, steps=10)["id"] for prompt in BATCH_PROMPTS]
        stack.start_worker()
        yield Demo(stack, batch_ids)
    finally:
        stack.stop()


def pictures(stack: Stack, job: dict[str, Any]) -> list[Image.Image]:
    assert job["status"] == "succeeded", job
    return [Image.open(io.BytesIO(stack.download(o["url"]).content)).convert("RGB") for o in job["outputs"]]


def run(stack: Stack, **fields: Any) -> list[Image.Image]:
    return pictures(stack, stack.wait(stack.submit(**fields)["id"]))


def adherence(prompt: str, image: Image.Image) -> float:
    """The share of (foreground colour, shape, background colour) the picture gets right."""
    words, verdict = prompt.split(), judge(image)
    return ((verdict.fg == words[1]) + (verdict.shape == words[2]) + (verdict.bg == words[5])) / 3


def test_jobs_of_one_batch_each_get_their_own_prompt(demo: Demo) -> None:
    jobs = [demo.stack.wait(job_id) for job_id in demo.batch_ids]
    assert len({job["batch_id"] for job in jobs}) == 1 and jobs[0]["batch_size"] == 4, jobs
    seen = [judge(pictures(demo.stack, job)[0]) for job in jobs]
    asked = [prompt.split() for prompt in BATCH_PROMPTS]
    assert [(v.fg, v.bg) for v in seen] == [(w[1], w[5]) for w in asked]


def test_the_default_model_is_the_demo_model(demo: Demo) -> None:
    job = demo.stack.wait(demo.stack.submit(prompt=PROMPTS[0], seed=3)["id"])
    assert job["model"] == "demo-shapes", job
    assert (job["params"]["width"], job["params"]["height"]) == (64, 64), job
    large = run(demo.stack, prompt=PROMPTS[0], seed=3, steps=10, width=128, height=128)[0]
    assert large.size == (128, 128)


def test_colour_follows_the_prompt_and_guidance_matters(demo: Demo) -> None:
    """Every picture at guidance 7 gets its colours; adherence (colours and shape) is
    lower at guidance 1, where the shape is often another one."""
    fields = {"seed": 40, "num_images": 3, "steps": 10}
    guided = {p: run(demo.stack, prompt=p, guidance_scale=7, **fields) for p in PROMPTS}
    unguided = {p: run(demo.stack, prompt=p, guidance_scale=1, **fields) for p in PROMPTS}
    for prompt, images in guided.items():
        words = prompt.split()
        assert all((judge(i).fg, judge(i).bg) == (words[1], words[5]) for i in images), prompt
    score_7 = np.mean([adherence(p, i) for p, images in guided.items() for i in images])
    score_1 = np.mean([adherence(p, i) for p, images in unguided.items() for i in images])
    assert score_7 > score_1, (score_7, score_1)


def test_the_negative_prompt_reaches_the_model(demo: Demo) -> None:
    """With the prompt as its own negative, guidance cancels out: the picture is the one
    guidance 1 (no negative branch at all) gives, and not the guided one."""
    prompt, fields = PROMPTS[1], {"seed": 9, "scheduler": "ddim", "steps": 10}
    cancelled = run(demo.stack, prompt=prompt, negative_prompt=prompt, guidance_scale=7, **fields)[0]
    unguided = run(demo.stack, prompt=prompt, guidance_scale=1, **fields)[0]
    guided = run(demo.stack, prompt=prompt, guidance_scale=7, **fields)[0]

    def distance(a: Image.Image, b: Image.Image) -> float:
        return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())

    assert distance(cancelled, unguided) < 2.0 < distance(cancelled, guided), (
        distance(cancelled, unguided),
        distance(cancelled, guided),
    )


def test_img2img_at_low_strength_keeps_the_layout(demo: Demo) -> None:
    scene = Scene(bg="blue", fg="red", shape="circle", cx=0.3, cy=0.35, side=0.4)
    source = render(scene, 64)
    out = run(
        demo.stack,
        type="img2img",
        prompt=scene.caption(),
        image=b64(source),
        strength=0.3,
        seed=2,
        steps=10,
        num_images=2,
    )
    for image in out:
        verdict = judge(image)
        assert (verdict.fg, verdict.shape, verdict.bg) == ("red", "circle", "blue")
        assert np.abs(np.asarray(image, dtype=float) - np.asarray(source, dtype=float)).mean() < 12


def test_inpainting_draws_the_prompt_inside_the_mask_only(demo: Demo) -> None:
    image, mask = blue_picture_and_mask()
    out = run(
        demo.stack,
        type="inpaint",
        prompt="a red square",
        image=b64(image),
        mask=b64(mask),
        mask_blur=0,
        seed=30,
        steps=10,
        num_images=4,
    )
    assert sum(centre_colour(picture) == "red" for picture in out) >= 3
    keep = np.asarray(mask) == 0
    for picture in out:
        assert np.array_equal(np.asarray(picture)[keep], np.asarray(image)[keep])
