"""ETA of a hires fix: its second pass counts at the target size (web/eta.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from easel.shared.db import session_scope
from easel.shared.models import Job, utcnow
from easel.shared.settings import Settings
from easel.web.eta import PRIOR_OVERHEAD, PRIOR_RATE, QueueEstimates, cost_model
from tests.factories import migrated_settings, worker_row

# A 500x500 first pass (0.25 megapixels) of 10 steps, redrawn at 1000x1000 (1 megapixel):
# 10 steps at strength 0.5, so 5 denoising steps there; 15 steps in all.
HIRES = {"width": 1000, "height": 1000, "upscaler": "latent", "steps": 10, "denoising_strength": 0.5}
WORK = 10 * 0.25 + 5 * 1.0  # step-megapixels of one image


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(home=tmp_path, auth_enabled=False)


def hires_job(status: str, **fields: object) -> Job:
    defaults: dict[str, object] = {
        "type": "txt2img",
        "model": "m",
        "prompt": "p",
        "negative_prompt": "",
        "width": 500,
        "height": 500,
        "steps": 10,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "seed": 1,
        "num_images": 1,
        "hires": HIRES,
        "progress_total": 15,
        "timings": {},
    }
    return Job(**{**defaults, "status": status, **fields})


def test_a_queued_hires_job_counts_its_second_pass_at_the_target_size(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        session.add(worker_row("w", ["m"]))
        queued = hires_job("queued", num_images=2)
        session.add(queued)
        session.flush()
        place = QueueEstimates(session, 20, 30.0).place(queued)
    # The prior: nothing ahead, its own 2 images of WORK each.
    assert place.position == 0
    assert place.eta_seconds == pytest.approx(PRIOR_OVERHEAD + PRIOR_RATE * WORK * 2, abs=0.01)


@pytest.mark.parametrize(
    ("step", "left"),
    [
        (0, WORK),
        (4, 6 * 0.25 + 5 * 1.0),  # 6 first-pass steps and the whole second pass left
        (12, 3 * 1.0),  # 3 second-pass steps left
    ],
)
def test_a_running_hires_job_counts_what_is_left_of_each_pass(
    settings: Settings, step: int, left: float
) -> None:
    with session_scope(settings.database_url) as session:
        running = hires_job("running", progress_step=step)
        session.add(running)
        session.flush()
        eta = QueueEstimates(session, 20, 30.0).place(running).eta_seconds
    assert eta == pytest.approx(PRIOR_RATE * left, abs=0.01)


def test_the_rate_learned_from_a_hires_job_counts_its_second_pass(settings: Settings) -> None:
    timings = {"generate_seconds": 2 * WORK, "run_seconds": 2 * WORK + 1.0, "load_seconds": 0.0}
    with session_scope(settings.database_url) as session:
        session.add(hires_job("succeeded", finished_at=utcnow(), timings=timings))
    with session_scope(settings.database_url) as session:
        model = cost_model(session, "m", history=20)
    assert model.rate == pytest.approx(2.0)  # seconds per step-megapixel, both passes counted
    assert model.overhead == pytest.approx(1.0)


def test_a_queued_sd_upscale_job_counts_each_tile(settings: Settings) -> None:
    """An SD upscale of a 480x300 image x 2 in 512x512 tiles overlapping by 64: 960x600,
    a grid of 2 x 2 tiles, each redrawn with the job's steps at the tile's size."""
    tiled = {"upscaler": "lanczos", "scale": 2.0, "overlap": 64, "width": 960, "height": 600}
    with session_scope(settings.database_url) as session:
        session.add(worker_row("w", ["m"]))
        queued = hires_job(
            "queued", type="img2img", width=512, height=512, hires=None, sd_upscale=tiled, progress_total=None
        )
        session.add(queued)
        session.flush()
        place = QueueEstimates(session, 20, 30.0).place(queued)
    work = 4 * 10 * 512 * 512 / 1e6
    assert place.eta_seconds == pytest.approx(PRIOR_OVERHEAD + PRIOR_RATE * work, abs=0.01)
