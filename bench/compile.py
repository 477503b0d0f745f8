"""The compile cache's cold and warm starts on the CPU: tiny-sd through inductor's CPU backend.

    python -m bench.compile --size 64 --steps 4 --batch 2 --jobs 4

Each start is a new process doing what a worker does at start (``compiler_from_settings``,
``load_pipeline``, ``Compiler.attach``), then running ``--jobs`` one-image jobs of
``--size`` and ``--steps`` (``euler_a``). The starts, in order, on one compile cache folder:

1. ``eager``: ``EASEL_TORCH_COMPILE=false``, the baseline.
2. ``cold``: the cache empty, ``EASEL_COMPILE_BACKGROUND=false``: the first job waits for the compile.
3. ``warm``: the same folder again: the entry and inductor's own caches are there.
4. ``cold_background`` (``--background``): the cache empty again; the first job runs eagerly
   at once while the UNet compiles in a thread (the worker's default), then the rest compiled.
5. ``downloaded`` (``--downloaded``): only the entry (what another machine gets from S3),
   inductor's own caches empty.

Each reports seconds from the process's spawn to the model loaded, to its first job done
and to its UNet compiled, the compile cache's answer, the warm-up seconds, the compiles
(dynamo's counters: ``inductor_compiles``, graphs inductor compiled rather than found in
its caches; ``graphs_traced``, the graphs dynamo traced, from a cache or not) and the
median seconds per job after the first. Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._stack import bench_parser, build_tiny_model, emit, machine, progress
from bench.processes import TINY_SD_JOB


def one_start(args: list[str]) -> None:
    """One worker start in this process (``--start``); prints its figures as one JSON line."""
    spawned, model, size, steps, jobs = (
        float(args[0]),
        Path(args[1]),
        int(args[2]),
        int(args[3]),
        int(args[4]),
    )
    from torch._dynamo.utils import counters

    from easel.shared.models import JobType
    from easel.shared.params import GenerationParams
    from easel.shared.registry import ModelSource, ModelSpec
    from easel.shared.settings import Settings
    from easel.worker.engine.compile_switch import compiler_from_settings
    from easel.worker.engine.device import DevicePlan
    from easel.worker.engine.generate import GenerationRequest, generate_batch
    from easel.worker.engine.pipelines import load_pipeline

    settings = Settings()
    plan = DevicePlan("cpu", "float32")
    spec = ModelSpec(name="tiny-sd", source=ModelSource.DIRECTORY, location=str(model), default_size=size)
    compiler = compiler_from_settings(settings, plan)
    pipe = load_pipeline(spec, plan, channels_last=False)
    loaded = time.time() - spawned
    if compiler is not None:
        compiler.warm_up_steps = 2
        compiler.attach(spec, pipe)
    seconds: list[float] = []
    first_job = 0.0
    for index in range(jobs):
        started = time.perf_counter()
        params = {**TINY_SD_JOB, "width": size, "height": size, "steps": steps, "seed": index}
        request = GenerationParams(
            type=JobType.TXT2IMG, prompt="a red square", **{**params, "scheduler": "euler_a"}
        )
        generate_batch(pipe, [GenerationRequest(request)])
        seconds.append(time.perf_counter() - started)
        if index == 0:
            first_job = time.time() - spawned
            if compiler is not None:
                compiler.wait(spec.name)  # a background compile: the rest run compiled
    state = compiler.states.get(spec.name) if compiler is not None else None
    compiled = time.time() - spawned if state is not None and state.path == "compiled" else None
    figures = {
        "cache": state.cache if state else None,
        "path": state.path if state else "eager",
        "seconds_to_model_loaded": round(loaded, 2),
        "seconds_to_first_job": round(first_job, 2),
        "seconds_to_compiled": round(compiled, 2) if compiled is not None else None,
        "warm_up_seconds": round(state.warm_up_seconds, 2) if state and state.warm_up_seconds else None,
        "first_job_seconds": round(seconds[0], 3),
        "job_seconds_median": round(statistics.median(seconds[1:]), 3) if len(seconds) > 1 else None,
        "inductor_compiles": counters["inductor"]["fxgraph_cache_miss"],
        "inductor_cache_hits": counters["inductor"]["fxgraph_cache_hit"],
        "graphs_traced": counters["stats"]["unique_graphs"],
    }
    print(json.dumps(figures), flush=True)


def start(name: str, env: dict[str, str], model: Path, opts: Any) -> dict[str, Any]:
    """Spawn one start with ``env`` over the inherited environment; its figures."""
    progress(f"start {name}")
    spawned = time.time()
    command = [sys.executable, "-m", "bench.compile", "--start", str(spawned), str(model)]
    command += [str(opts.size), str(opts.steps), str(opts.jobs)]
    done = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=opts.timeout
    )
    if done.returncode != 0:
        raise SystemExit(f"start {name} failed:\n{done.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    progress(f"start {name}: {figures}")
    return figures


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--start"]:
        one_start(argv[1:])
        return
    parser = bench_parser("python -m bench.compile", __doc__)
    parser.add_argument("--size", type=int, default=64, help="image width and height (64)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per job (4)")
    parser.add_argument(
        "--batch", type=int, default=2, help="EASEL_MAX_BATCH_SIZE: batch sizes warmed up (2)"
    )
    parser.add_argument("--jobs", type=int, default=4, help="one-image jobs per start (4)")
    parser.add_argument(
        "--background", action="store_true", help="also a cold start compiling in the background"
    )
    parser.add_argument("--downloaded", action="store_true", help="also a start with only the entry")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one start may take")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    opts = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="easel-bench-compile-"))
    try:
        model = build_tiny_model(root)
        common = {
            "EASEL_HOME": str(root / "home"),
            "EASEL_MAX_BATCH_SIZE": str(opts.batch),
            "EASEL_COMPILE_SHAPES": f"{opts.size}x{opts.size}",
            "EASEL_LOG_FORMAT": "text",
        }
        common.pop("TORCHINDUCTOR_CACHE_DIR", None)
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)  # inductor's caches under each cache folder
        cache = str(root / "cache")
        compiled = {**common, "EASEL_TORCH_COMPILE": "true", "EASEL_COMPILE_CACHE": cache}
        starts: dict[str, Any] = {
            "eager": start("eager", {**common, "EASEL_TORCH_COMPILE": "false"}, model, opts)
        }
        starts["cold"] = start("cold", {**compiled, "EASEL_COMPILE_BACKGROUND": "false"}, model, opts)
        starts["warm"] = start("warm", compiled, model, opts)
        if opts.downloaded:
            moved = root / "downloaded"
            moved.mkdir()
            for entry in Path(cache).glob("*.bin"):
                shutil.copy(entry, moved / entry.name)
            starts["downloaded"] = start(
                "downloaded", {**compiled, "EASEL_COMPILE_CACHE": str(moved)}, model, opts
            )
        if opts.background:
            fresh = {**compiled, "EASEL_COMPILE_CACHE": str(root / "cache-background")}
            starts["cold_background"] = start("cold_background", fresh, model, opts)
        emit(
            {
                "benchmark": "compile",
                "size": opts.size,
                "steps": opts.steps,
                "batch": opts.batch,
                "jobs": opts.jobs,
                "starts": starts,
                "warm_start_inductor_compiles": starts["warm"]["inductor_compiles"],
                "machine": machine(load_at_start),
            }
        )
    finally:
        if opts.keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
