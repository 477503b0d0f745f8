"""The benchmarks' command lines and figures, without starting any process."""

from __future__ import annotations

import importlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench._stack import batch_sizes, batch_times, compatible_jobs, percentile, round_breakdown
from bench.api import Samples, summarise
from bench.processes import start_process, wait_for

BENCHMARKS = ["chaos", "throughput", "batching", "api", "preview", "gpu", "compile", "hold", "soak"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_has_a_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"bench.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.batching import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--batch-sizes", "1,four"])
    assert exit_info.value.code == 2
    assert "--batch-sizes" in capsys.readouterr().err


@pytest.mark.parametrize("versus", ["EASEL_STORE_OVERLAP", "STORE_OVERLAP=true", "EASEL_STORE_OVERLAP="])
def test_a_comparison_needs_a_setting_and_its_value(versus: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.throughput import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--versus", versus])
    assert exit_info.value.code == 2
    assert f"--versus takes EASEL_NAME=VALUE, not {versus!r}" in capsys.readouterr().err


def test_gpu_stack_entries_become_settings() -> None:
    from bench.gpu import stack_settings

    assert stack_settings("eager", 512) == {"EASEL_TORCH_COMPILE": "false"}
    assert stack_settings("compile+EASEL_CHANNELS_LAST=false", 512) == {
        "EASEL_TORCH_COMPILE": "true",
        "EASEL_COMPILE_SHAPES": "512x512",
        "EASEL_COMPILE_BACKGROUND": "false",
        "EASEL_CHANNELS_LAST": "false",
    }


@pytest.mark.parametrize(("stacks", "named"), [("eager,fast", "'fast'"), ("eager+EASEL_X", "'EASEL_X'")])
def test_gpu_bench_refuses_a_bad_stack_before_it_starts(stacks: str, named: str) -> None:
    from bench.gpu import main

    with pytest.raises(SystemExit, match=named):
        main(["--stacks", stacks])


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile(list(range(101)), 95) == 95


def test_compatible_jobs_share_one_batch_key() -> None:
    jobs = compatible_jobs(5, 64, 4)
    key = {"model", "type", "width", "height", "steps", "scheduler", "guidance_scale"}
    assert len({tuple(job[k] for k in sorted(key)) for job in jobs}) == 1
    assert len({job["seed"] for job in jobs}) == len({job["prompt"] for job in jobs}) == 5


def test_batch_sizes_from_job_objects_then_from_the_log() -> None:
    jobs = [{"id": "a", "batch_id": "x"}, {"id": "b", "batch_id": "x"}, {"id": "c", "batch_id": "y"}]
    assert batch_sizes("", ["a", "b", "c"], jobs) == [2, 1]
    log = "\n".join(
        json.dumps({"message": "running job", "job_id": job_id, "batch_id": batch})
        for job_id, batch in [("a", "1"), ("b", "1"), ("c", "2"), ("other", "2")]
    )
    assert batch_sizes(log + "\nnot json", ["a", "b", "c"]) == [2, 1]
    assert batch_sizes("no batches here", ["a"]) is None


def test_a_round_breaks_down_into_parts_that_add_up_to_it() -> None:
    """Two runs of two one-image jobs, submitted at t=100: the first claimed at 0.05 and
    0.1 (its start is its last claim), denoised 0.5 s, recorded at 0.7; the second
    claimed at 0.65, denoised 0.3 s, recorded at 1.0. Bare: 0.125 s an image."""

    def job(batch: str, started: float, generate: float, finished: float) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(100 + started, UTC).isoformat()
        done = datetime.fromtimestamp(100 + finished, UTC).isoformat()
        timings = {"generate_seconds": generate}
        return {
            "batch_id": batch,
            "started_at": stamp,
            "finished_at": done,
            "timings": timings,
            "outputs": [1],
        }

    finished = [
        job("b", 0.65, 0.3, 1.0),
        job("a", 0.05, 0.5, 0.7),
        job("a", 0.1, 0.5, 0.7),
        job("b", 0.6, 0.3, 1.0),
    ]
    batches = batch_times(finished, 100.0)
    assert batches == [
        {"start": 0.1, "generate": 0.5, "end": 0.7, "images": 2},
        {"start": 0.65, "generate": 0.3, "end": 1.0, "images": 2},
    ]
    parts = round_breakdown(batches, 0.125)
    assert parts == {
        "bare": 0.5,
        "head": 0.1,
        "first_batch": 0.25,
        "later_batches": 0.05,
        "between_batches": 0.05,
        "tail": 0.05,
    }
    assert sum(parts.values()) == pytest.approx(1.0)  # the round: first submit to last recorded
    assert batch_times([{**finished[0], "batch_id": None}], 100.0) is None


def test_api_figures_count_only_the_measured_window() -> None:
    samples = Samples(
        ok=[("submit", 0.5, 0.010), ("submit", 1.5, 0.020), ("poll", 2.0, 0.004), ("poll", 9.0, 0.1)],
        errors=[("poll", 1.2, "503"), ("submit", 0.2, "ConnectionError")],
    )
    figures = summarise([samples], warmup=1.0, duration=2.0)
    assert figures["requests"] == 3
    assert figures["errors"] == 1
    assert figures["submit"]["p50_ms"] == 20.0
    assert figures["poll"]["errors"] == {"503": 1}
    assert figures["poll"]["requests_per_s"] == 1.0


def test_a_process_cpu_time_counts_the_children_it_started(tmp_path: Path) -> None:
    """``Process.cpu_seconds``: what bench.api reports per request (gunicorn's workers are
    children of the process it starts)."""
    burnt = tmp_path / "burnt"
    child = (
        "import sys, time\n"
        "end = time.process_time() + 0.5\n"
        "while time.process_time() < end: pass\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(60)\n"
    )
    spawn = f"subprocess.Popen([sys.executable, '-c', {child!r}, {str(burnt)!r}])"
    parent = f"import subprocess, sys, time; {spawn}; time.sleep(60)"
    process = start_process("parent", [sys.executable, "-c", parent], dict(os.environ), tmp_path)
    try:
        wait_for(burnt.exists, 30, "the child to burn half a second of CPU")
        assert 0.45 <= process.cpu_seconds() < 5
    finally:
        process.stop(timeout=5)


def test_soak_reads_a_processs_resources_and_fits_its_growth() -> None:
    from bench.soak import children, resources, slope

    mine = resources(os.getpid())
    assert mine is not None and mine["rss_mb"] > 0 and mine["fds"] >= 3 and mine["threads"] >= 1
    assert resources(2**22 + 12345) is None  # no such process
    assert os.getpid() in children(os.getppid())
    assert slope([(1000, 100.0), (2000, 102.0), (3000, 104.0)]) == pytest.approx(0.002)
    assert slope([(1000, 100.0)]) is None


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_the_hires_comparison_does_the_same_denoising_on_both_sides(upscaler: str) -> None:
    """``bench.preview --mode hires``: the hires job's two passes are the txt2img job's
    steps at its size and the img2img job's at the target size, whose input is that size."""
    from argparse import Namespace

    from bench.preview import hires_jobs
    from easel.shared.registry import ModelSource, ModelSpec, Registry
    from easel.shared.schemas import JobInputs, parse_job_request, resolve_job
    from easel.shared.settings import Settings

    spec = ModelSpec(name="tiny-sd", source=ModelSource.TINY, location="-", default_size=64, max_size=512)
    registry = Registry([spec], "tiny-sd")
    args = Namespace(size=64, hires_scale=2.0, steps=20, strength=0.5, upscaler=upscaler)
    resolved = {
        name: resolve_job(parse_job_request(fields), registry, Settings(), JobInputs(image=image)).params
        for name, (fields, image) in hires_jobs(args, 7).items()
    }
    hires, txt2img, img2img = resolved["hires"], resolved["txt2img"], resolved["img2img"]
    assert hires.hires is not None and hires.hires.upscaler == upscaler
    assert (hires.width, hires.height) == (txt2img.width, txt2img.height) == (64, 64)
    assert hires.output_size == img2img.output_size == (128, 128)
    assert hires.steps == txt2img.denoising_steps == 20
    assert hires.hires.denoising_steps == img2img.denoising_steps == 10
    assert hires.denoising_steps == txt2img.denoising_steps + img2img.denoising_steps
