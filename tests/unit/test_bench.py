"""The benchmarks' command lines and figures, without starting any process."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

from bench._stack import batch_sizes, compatible_jobs, percentile
from bench.api import Samples, summarise
from bench.processes import start_process, wait_for

BENCHMARKS = ["chaos", "throughput", "batching", "api", "preview", "gpu"]


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


def test_gpu_stack_entries_become_settings() -> None:
    from bench.gpu import stack_settings

    assert stack_settings("eager", 512) == {}
    assert stack_settings("compile+EASEL_CHANNELS_LAST=false", 512) == {
        "EASEL_TORCH_COMPILE": "true",
        "EASEL_COMPILE_SHAPES": "512x512",
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
