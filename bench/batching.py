"""Batching: the same stream of compatible jobs with and without cross-job batching.

    python -m bench.batching --jobs 32 --size 256 --steps 20 --batch-sizes 1,4

``--jobs`` one-image txt2img jobs with one batch key (tiny-sd, txt2img, size, steps,
scheduler, guidance scale; different prompts and seeds) go through real ``easel web``
and one ``easel worker`` on PostgreSQL, Redis and an S3 endpoint (moto), once per
``EASEL_MAX_BATCH_SIZE`` in ``--batch-sizes``. Each run has a fresh database, Redis
database and bucket, warms up (one job, then one batch's worth at once), then POSTs
the jobs at once and is timed from the first submit to the last job's ``finished_at``.

Prints one JSON object: images/s of each run, how many worker runs (pipeline calls)
the jobs took (the jobs' ``batch_id``, else the worker log's), and the gain of the last
batch size over the first. ``--repeat R`` runs R interleaved rounds of every batch size
and reports the median images/s of each (steadier on a machine doing other work);
progress goes to stderr.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from bench._stack import (
    PipelineOptions,
    compatible_jobs,
    emit,
    exit_cleanly_on_sigterm,
    pipeline_options,
    pipeline_parser,
    ratio,
    temporary_tiny_model,
    totals,
)


def run(
    jobs: int = 32,
    size: int = 256,
    steps: int = 20,
    batch_sizes: tuple[int, ...] = (1, 4),
    repeat: int = 1,
    options: PipelineOptions | None = None,
) -> dict[str, Any]:
    options = options or PipelineOptions()
    load_at_start = os.getloadavg()[0]
    work = compatible_jobs(jobs, size, steps)
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    by_size: dict[str, float] = {}
    with temporary_tiny_model() as model:
        for round_ in range(1, repeat + 1):
            for batch in batch_sizes:
                label = f"batch {batch}" + (f", round {round_}/{repeat}" if repeat > 1 else "")
                figures = options.measure_rest(model, work, batch, label)
                runs.append({"max_batch_size": batch, "round": round_, **figures})
    for batch in batch_sizes:
        rates = [r["images_per_s"] for r in runs if r["max_batch_size"] == batch]
        by_size[str(batch)] = round(statistics.median(rates), 3)
    return {
        "benchmark": "batching",
        **options.figures(jobs, size, steps),
        "repeat": repeat,
        "images_per_s": by_size,
        "gain": ratio(by_size[str(batch_sizes[-1])], by_size[str(batch_sizes[0])])
        if len(batch_sizes) > 1
        else None,
        "runs": runs,
        **totals(started, load_at_start),
    }


def main(argv: list[str] | None = None) -> None:
    parser = pipeline_parser("python -m bench.batching", __doc__)
    parser.add_argument("--jobs", type=int, default=32, help="one-image jobs per run (default 32)")
    parser.add_argument(
        "--batch-sizes", default="1,4", help="EASEL_MAX_BATCH_SIZE of each run, comma-separated (1,4)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of all batch sizes, interleaved; medians are reported"
    )
    args = parser.parse_args(argv)
    try:
        sizes = tuple(int(part) for part in args.batch_sizes.split(","))
    except ValueError:
        parser.error(f"--batch-sizes: whole numbers separated by commas (got {args.batch_sizes!r})")
    if not sizes or min(sizes) < 1 or min(args.jobs, args.steps, args.repeat) < 1 or args.size % 8:
        parser.error("--jobs, --steps, --repeat, --batch-sizes must be positive, --size a multiple of 8")
    exit_cleanly_on_sigterm()
    emit(run(args.jobs, args.size, args.steps, sizes, args.repeat, pipeline_options(args)))


if __name__ == "__main__":
    main()
