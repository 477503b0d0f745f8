"""Throughput: the bare diffusers pipeline against the same jobs through REST.

    python -m bench.throughput --jobs 32 --batch 4 --size 256 --steps 20

One model (the locally built tiny-sd) and one set of parameters, three ways:

1. bare, serial: the pipeline (``worker.engine.pipelines.load_pipeline``) called in a
   loop in this process, one image per call;
2. bare, batched: the same images in calls of ``--batch`` (one generator per image);
3. REST: ``--jobs`` jobs of one image each, POSTed at once to ``/api/v1/jobs`` of real
   ``easel web`` and one ``easel worker`` (``EASEL_MAX_BATCH_SIZE=--batch``) on
   PostgreSQL, Redis and an S3 endpoint (moto), timed from the first submit to the
   last job's ``finished_at``.

Both sides use the same torch thread count: ``--threads`` (default 0: torch's own
default, the number of physical cores) is resolved here and passed to the worker as
``EASEL_CPU_THREADS``. Each side warms up first: bare, one call of each batch shape;
REST, one job (which waits for the worker to load the model), then ``--batch`` jobs
at once. Prints one JSON object with images/s of each and the ratios
REST/bare-batched and REST/bare-serial; progress goes to stderr.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench._stack import (
    GUIDANCE,
    SCHEDULER,
    PipelineOptions,
    Timer,
    compatible_jobs,
    emit,
    exit_cleanly_on_sigterm,
    pipeline_options,
    pipeline_parser,
    progress,
    rate,
    ratio,
    temporary_tiny_model,
    totals,
)


def resolve_threads(threads: int) -> int:
    """Set this process's torch threads (0: keep torch's default) and return the count."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def bare(model: Path, jobs: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Images/s of the bare pipeline: one image per call, then ``batch`` per call."""
    import torch

    from easel.shared.registry import ModelSource, ModelSpec
    from easel.worker.engine.device import DevicePlan
    from easel.worker.engine.generate import make_scheduler
    from easel.worker.engine.pipelines import load_pipeline

    spec = ModelSpec(name="tiny-sd", source=ModelSource.TINY, location=str(model))
    pipe = load_pipeline(spec, DevicePlan("cpu", "float32"))
    pipe.scheduler = make_scheduler(SCHEDULER, pipe.scheduler.config)
    first = jobs[0]

    def call(group: list[dict[str, Any]]) -> None:
        with torch.inference_mode():
            pipe(
                prompt=[job["prompt"] for job in group],
                width=first["width"],
                height=first["height"],
                num_inference_steps=first["steps"],
                guidance_scale=GUIDANCE,
                generator=[torch.Generator("cpu").manual_seed(job["seed"]) for job in group],
                output_type="pil",
            )

    progress("bare: warm-up calls")
    call(jobs[:1])
    call(jobs[:batch])  # the first call of each shape pays one-time costs
    progress(f"bare: {len(jobs)} images, one per call")
    with Timer() as serial:
        for job in jobs:
            call([job])
    progress(f"bare: serial {serial.seconds:.1f}s; now {batch} per call")
    with Timer() as batched:
        for start in range(0, len(jobs), batch):
            call(jobs[start : start + batch])
    progress(f"bare: batched {batched.seconds:.1f}s")
    return {
        "serial_seconds": round(serial.seconds, 3),
        "serial_images_per_s": rate(len(jobs), serial.seconds),
        "batched_seconds": round(batched.seconds, 3),
        "batched_images_per_s": rate(len(jobs), batched.seconds),
    }


def run(
    jobs: int = 32,
    batch: int = 4,
    size: int = 256,
    steps: int = 20,
    options: PipelineOptions | None = None,
) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    options = options or PipelineOptions()
    options = replace(options, threads=resolve_threads(options.threads))
    work = compatible_jobs(jobs, size, steps)
    started = time.monotonic()
    with temporary_tiny_model() as model:
        bare_figures = bare(model, work, batch)
        gc.collect()  # the bare pipeline is gone before the worker starts
        rest_figures = options.measure_rest(model, work, batch, label="rest")
    return {
        "benchmark": "throughput",
        **options.figures(jobs, size, steps),
        "batch": batch,
        "stack": "embedded" if options.embedded else "postgresql+redis+s3",
        "bare": bare_figures,
        "rest": rest_figures,
        "rest_vs_bare_batched": ratio(rest_figures["images_per_s"], bare_figures["batched_images_per_s"]),
        "rest_vs_bare_serial": ratio(rest_figures["images_per_s"], bare_figures["serial_images_per_s"]),
        "bare_batched_vs_serial": ratio(
            bare_figures["batched_images_per_s"], bare_figures["serial_images_per_s"]
        ),
        **totals(started, load_at_start),
    }


def main(argv: list[str] | None = None) -> None:
    parser = pipeline_parser("python -m bench.throughput", __doc__)
    parser.add_argument("--jobs", type=int, default=32, help="images (one-image jobs) per side (default 32)")
    parser.add_argument("--batch", type=int, default=4, help="bare batch size and EASEL_MAX_BATCH_SIZE")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.batch < 1 or args.size % 8 or args.steps < 1:
        parser.error("--jobs, --batch and --steps must be positive and --size a multiple of 8")
    exit_cleanly_on_sigterm()
    emit(run(args.jobs, args.batch, args.size, args.steps, pipeline_options(args)))


if __name__ == "__main__":
    main()
