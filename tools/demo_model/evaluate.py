"""Score a ``demo-shapes`` pipeline: does it draw what the prompt says?

Generates random prompts of the world with fresh seeds and judges each picture with
``world.judge`` (nearest palette colour, fill of the bounding box), and inpaints
``"a red square"`` into a masked centre of a blue picture. Used by
``bench/demo_quality.py`` and the tests; the pipeline runs with Easel's own scheduler
table (``easel.worker.engine.generate.make_scheduler``) as a job would.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tools.demo_model.world import COLORS, SHAPES, judge, palette_classes

TARGETS = {"foreground": 0.85, "background": 0.90, "shape": 0.70}
"""Least share of pictures whose foreground colour, background colour and shape match."""


def load(folder: Path | str) -> Any:
    """The pipeline in ``folder`` on the CPU in float32, as a CPU worker loads it."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_prompts(rng: random.Random, count: int) -> list[str]:
    """``count`` captions ``"a {color} {shape} on a {color} background"`` (colours differ)."""
    prompts = []
    for _ in range(count):
        bg = rng.choice(list(COLORS))
        fg = rng.choice([c for c in COLORS if c != bg])
        prompts.append(f"a {fg} {rng.choice(SHAPES)} on a {bg} background")
    return prompts


def generate(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int = 20,
    guidance: float = 7.0,
    scheduler: str = "ddim",
    size: int = 64,
    negative: list[str] | None = None,
    chunk: int = 16,
) -> list[Image.Image]:
    """One picture per (prompt, seed), ``chunk`` at a time, each with its own generator."""
    import torch

    from easel.worker.engine.generate import make_scheduler

    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    images: list[Image.Image] = []
    negative = negative or [""] * len(prompts)
    for start in range(0, len(prompts), chunk):
        part = slice(start, start + chunk)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds[part]]
        with torch.inference_mode():
            result = pipe(
                prompt=prompts[part],
                negative_prompt=negative[part],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                height=size,
                width=size,
            )
        images += result.images
    return images


@dataclass
class Quality:
    """The share of pictures whose foreground, background and shape match their prompt."""

    prompts: list[str]
    seeds: list[int]
    verdicts: list[Any]
    seconds: float
    rates: dict[str, float] = field(default_factory=dict)

    def passed(self) -> bool:
        return all(self.rates[name] >= least for name, least in TARGETS.items())

    def misses(self) -> list[str]:
        """One line per picture that missed something."""
        lines = []
        for prompt, seed, verdict in zip(self.prompts, self.seeds, self.verdicts, strict=True):
            words = prompt.split()
            if (verdict.fg, verdict.shape, verdict.bg) != (words[1], words[2], words[5]):
                lines.append(
                    f"{prompt!r} seed {seed}: saw {verdict.fg} {verdict.shape} on {verdict.bg} "
                    f"(fill {verdict.fill:.2f}, foreground {verdict.fg_fraction:.0%})"
                )
        return lines


def quality(pipe: Any, count: int = 48, seed: int | None = None, **options: Any) -> Quality:
    """Judge ``count`` random prompts with fresh seeds (drawn from ``seed`` when given)."""
    rng = random.Random(seed)
    prompts = random_prompts(rng, count)
    seeds = [rng.randrange(2**31) for _ in prompts]
    started = time.perf_counter()
    images = generate(pipe, prompts, seeds, **options)
    seconds = time.perf_counter() - started
    verdicts = [judge(image) for image in images]
    asked = [prompt.split() for prompt in prompts]
    rates = {
        "foreground": float(np.mean([v.fg == w[1] for v, w in zip(verdicts, asked, strict=True)])),
        "background": float(np.mean([v.bg == w[5] for v, w in zip(verdicts, asked, strict=True)])),
        "shape": float(np.mean([v.shape == w[2] for v, w in zip(verdicts, asked, strict=True)])),
    }
    return Quality(prompts, seeds, verdicts, seconds, rates)


def blue_picture_and_mask(size: int = 64) -> tuple[Image.Image, Image.Image]:
    """A plain blue picture and a mask that repaints its centre half."""
    image = Image.new("RGB", (size, size), COLORS["blue"])
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image, mask


def centre_colour(image: Image.Image) -> str:
    """The most common palette colour of the central eighth of ``image``."""
    w, h = image.size
    centre = image.crop((w * 7 // 16, h * 7 // 16, w * 9 // 16, h * 9 // 16))
    return list(COLORS)[int(np.bincount(palette_classes(centre).ravel(), minlength=len(COLORS)).argmax())]


def unmasked_change(output: Image.Image, source: Image.Image, mask: Image.Image) -> int:
    """The largest change of any channel of any pixel the mask keeps (0-255)."""
    keep = np.asarray(mask.convert("L")) == 0
    diff = np.abs(np.asarray(output, dtype=np.int16) - np.asarray(source, dtype=np.int16)).max(-1)
    return int(diff[keep].max())


def inpaint_red_square(
    pipe: Any, seeds: list[int], *, steps: int = 20, guidance: float = 7.0, scheduler: str = "ddim"
) -> tuple[list[str], list[int]]:
    """Inpaint ``"a red square"`` into the blue picture once per seed, as an Easel worker
    does (diffusers' inpaint pipeline, then the unmasked pixels composited back).

    Returns the centre colour and the largest unmasked change of each picture.
    """
    import torch
    from diffusers import AutoPipelineForInpainting

    from easel.worker.engine.generate import keep_unmasked, make_scheduler

    inpaint = AutoPipelineForInpainting.from_pipe(pipe)
    inpaint.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    inpaint.set_progress_bar_config(disable=True)
    image, mask = blue_picture_and_mask()
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        outputs = inpaint(
            prompt=["a red square"] * len(seeds),
            image=[image] * len(seeds),
            mask_image=[mask] * len(seeds),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            height=64,
            width=64,
        ).images
    outputs = [keep_unmasked(out, image, mask, 0) for out in outputs]
    return [centre_colour(out) for out in outputs], [unmasked_change(out, image, mask) for out in outputs]
