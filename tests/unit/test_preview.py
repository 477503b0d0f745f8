"""Live previews on the real tiny pipeline: latents -> RGB, stored and overwritten, recorded."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from easel.shared.jobs import preview_key
from easel.shared.storage import LocalStorage
from easel.worker.engine import preview as preview_module
from easel.worker.engine.preview import SD1, PreviewWriter, latent_rgb_for, latent_to_image, preview_size
from tests.factories import enqueue, fetch, generate_one, generation_request, make_runner


class CountingStorage(LocalStorage):
    """A local folder that counts the writes of each key."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: dict[str, int] = {}

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.writes[key] = self.writes.get(key, 0) + 1
        super().put(key, data, content_type)


def test_latents_of_the_tiny_model_map_to_a_preview_of_the_output_size(env: dict[str, Any]) -> None:
    runner = make_runner(env)
    pipe = runner.cache.get(env["registry"].get("tiny-sd"))[0].for_type("txt2img")
    assert latent_rgb_for(pipe) is SD1  # 4-channel latents, not SDXL
    seen: list[Any] = []
    request = generation_request(width=64, height=48, steps=4, seeds=(5, 6))
    generate_one(
        pipe, request, on_latents=lambda step, offset, latents: seen.append((step, offset, latents.clone()))
    )
    assert [step for step, _, _ in seen] == [1, 2, 3, 4]
    assert all(offset == 0 and tuple(latents.shape) == (2, 4, 6, 8) for _, offset, latents in seen)
    first, last = (
        latent_to_image(latents[0], SD1, preview_size(64, 48)) for _, _, latents in (seen[0], seen[-1])
    )
    assert first.size == last.size == (64, 48) and first.mode == "RGB"
    assert np.abs(np.asarray(first, np.int16) - np.asarray(last, np.int16)).mean() > 1  # it changes
    assert preview_size(1024, 768) == (512, 384) and preview_size(64, 64) == (64, 64)


def test_a_running_job_gets_its_preview_written_overwritten_and_recorded(env: dict[str, Any]) -> None:
    storage = CountingStorage(env["storage"].root)
    runner = make_runner(env, storage=storage)
    runner.preview_interval = 0.001
    job_id = enqueue(env, steps=8, width=64, height=64)
    runner.run_next()
    assert runner._previews is not None
    runner._previews.drain()
    job = fetch(env, job_id)
    assert job.status == "succeeded"
    assert storage.writes[preview_key(job_id)] >= 2  # one object, overwritten
    assert job.preview_step is not None and 1 <= job.preview_step <= 8
    with Image.open(io.BytesIO(storage.get(preview_key(job_id)))) as preview:
        assert preview.format == "JPEG" and preview.size == (64, 64)


def test_previews_off_write_nothing(env: dict[str, Any]) -> None:
    storage = CountingStorage(env["storage"].root)
    runner = make_runner(env, storage=storage)  # preview_interval 0: off
    job_id = enqueue(env, steps=3)
    runner.run_next()
    assert preview_key(job_id) not in storage.writes and fetch(env, job_id).preview_step is None


def test_a_batch_is_first_previewed_one_interval_after_it_started(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that ends within the interval costs no preview; a longer one gets its first
    once it has denoised for an interval, then one per interval."""
    storage = CountingStorage(env["storage"].root)
    writer = PreviewWriter(env["sessions"], storage, "test:1", interval=1.0)
    pipe = make_runner(env).cache.get(env["registry"].get("tiny-sd"))[0].for_type("txt2img")
    clock = iter(itertools.count(100.0, 0.25))  # each look at the clock: a quarter second later
    monkeypatch.setattr(preview_module.time, "monotonic", lambda: next(clock))
    latents = torch.zeros(1, 4, 8, 8)  # one image's latents, as the step callback gets them

    previewed: list[int] = []
    callback = writer.for_batch(pipe, {0: "job-a"}, ["job-a"], (64, 64))  # started at 100.0
    assert callback is not None
    for step in range(1, 13):  # seen at 100.25, 100.5, ... 103.0
        callback(step, 0, latents)
        writer.drain()
        if writer.written > len(previewed):
            previewed.append(step)
    assert previewed == [4, 8, 12]  # at 101.0, 102.0, 103.0: one interval in, then each interval

    short = writer.for_batch(pipe, {0: "job-b"}, ["job-b"], (64, 64))  # started at 103.25
    assert short is not None
    for step in range(1, 4):  # 103.5 to 104.0: within its first interval
        short(step, 0, latents)
    writer.drain()
    assert preview_key("job-b") not in storage.writes and writer.written == 3
