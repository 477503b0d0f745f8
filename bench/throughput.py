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

Bare serial is timed once; then ``--rounds`` rounds each time bare batched and REST one
after the other, and the ratios are the medians over the rounds, so load on a shared
machine weighs on both sides alike. Both sides use the same torch thread count:
``--threads`` (default 0: torch's own default, the number of physical cores) is resolved
here and passed to the worker as ``EASEL_CPU_THREADS``. Each side warms up first: bare,
one call of each batch shape; REST, one job (which waits for the worker to load the
model), then ``--batch`` jobs at once. Prints one JSON object with images/s of each
round and the median ratios REST/bare-batched and REST/bare-serial; progress goes to
stderr. Each round also says where its REST time went against the bare rate of the
same round (``breakdown``: the bare time of its images, the wait for the first batch,
the first batch's and the later batches' denoising beyond bare, the time between
batches, and the last store; ``bench._stack.round_breakdown``), with the medians of
each part in ``breakdown_medians``.

``--versus EASEL_NAME=VALUE`` compares a setting side by side: each round then also
runs bare batched and REST with that setting (the two stacks take turns going first),
and ``versus`` reports those rounds the same way, with ``rounds_ahead``, the rounds in
which the setting's ratio was the higher one.
"""

from __future__ import annotations

import os
import statistics
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
    round_breakdown,
    temporary_tiny_model,
    totals,
)


def resolve_threads(threads: int) -> int:
    """Set this process's torch threads (0: keep torch's default) and return the count."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


class BarePipeline:
    """The bare pipeline, loaded once, timed serially (one image per call) or batched."""

    def __init__(self, model: Path, jobs: list[dict[str, Any]], batch: int) -> None:
        from easel.shared.registry import ModelSource, ModelSpec
        from easel.worker.engine.device import DevicePlan
        from easel.worker.engine.generate import make_scheduler
        from easel.worker.engine.pipelines import load_pipeline

        spec = ModelSpec(name="tiny-sd", source=ModelSource.TINY, location=str(model))
        self.pipe = load_pipeline(spec, DevicePlan("cpu", "float32"))
        self.pipe.scheduler = make_scheduler(SCHEDULER, self.pipe.scheduler.config)
        self.jobs, self.batch = jobs, batch
        progress("bare: warm-up calls")
        self.call(jobs[:1])
        self.call(jobs[:batch])  # the first call of each shape pays one-time costs

    def call(self, group: list[dict[str, Any]]) -> None:
        import torch

        first = self.jobs[0]
        with torch.inference_mode():
            self.pipe(
                prompt=[job["prompt"] for job in group],
                width=first["width"],
                height=first["height"],
                num_inference_steps=first["steps"],
                guidance_scale=GUIDANCE,
                generator=[torch.Generator("cpu").manual_seed(job["seed"]) for job in group],
                output_type="pil",
            )

    def serial_images_per_s(self) -> float | None:
        with Timer() as serial:
            for job in self.jobs:
                self.call([job])
        progress(f"bare: serial {serial.seconds:.1f}s")
        return rate(len(self.jobs), serial.seconds)

    def batched_images_per_s(self) -> float | None:
        with Timer() as batched:
            for start in range(0, len(self.jobs), self.batch):
                self.call(self.jobs[start : start + self.batch])
        progress(f"bare: batched {batched.seconds:.1f}s")
        return rate(len(self.jobs), batched.seconds)


def median_breakdown(breakdowns: list[dict[str, float]]) -> dict[str, float] | None:
    """Each part of the rounds' ``round_breakdown``, its median over the rounds."""
    if not breakdowns:
        return None
    return {name: round(statistics.median(b[name] for b in breakdowns), 3) for name in breakdowns[0]}


def run(
    jobs: int = 32,
    batch: int = 4,
    size: int = 256,
    steps: int = 20,
    options: PipelineOptions | None = None,
    rounds: int = 3,
    versus: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Bare serial once, then ``rounds`` rounds of bare batched and REST side by side; the
    ratios are the medians of the rounds' (the machine's load weighs on both sides alike).
    With ``versus`` (a setting's name and value), each round also runs bare batched and
    REST with that setting, the two in turn first, and ``versus`` reports them alike."""
    load_at_start = os.getloadavg()[0]
    options = options or PipelineOptions()
    options = replace(options, threads=resolve_threads(options.threads))
    stacks = [options] + ([replace(options, extra=(*options.extra, versus))] if versus else [])
    work = compatible_jobs(jobs, size, steps)
    started = time.monotonic()
    figures: list[list[dict[str, Any]]] = [[] for _ in stacks]
    with temporary_tiny_model() as model:
        bare = BarePipeline(model, work, batch)
        serial = bare.serial_images_per_s()
        for number in range(1, rounds + 1):
            order = range(len(stacks)) if number % 2 else reversed(range(len(stacks)))
            for index in order:
                batched = bare.batched_images_per_s()
                label = f"rest{' with ' + '='.join(versus) if index else ''}, round {number} of {rounds}"
                rest = stacks[index].measure_rest(model, work, batch, label=label)
                batches = rest.pop("batches")
                figures[index].append(
                    {
                        "bare_batched_images_per_s": batched,
                        "rest": rest,
                        "rest_vs_bare_batched": ratio(rest["images_per_s"], batched),
                        "breakdown": round_breakdown(batches, 1 / batched) if batches and batched else None,
                    }
                )
                progress(
                    f"round {number}: {label}: rest/bare batched {figures[index][-1]['rest_vs_bare_batched']}"
                )
    report = {
        "benchmark": "throughput",
        **options.figures(jobs, size, steps),
        "batch": batch,
        "stack": "embedded" if options.embedded else "postgresql+redis+s3",
        **summary(figures[0], serial),
    }
    if versus:
        mine, theirs = figures[0], figures[1]
        ahead = sum(
            1
            for a, b in zip(mine, theirs, strict=True)
            if (b["rest_vs_bare_batched"] or 0) > (a["rest_vs_bare_batched"] or 0)
        )
        report["versus"] = {"setting": "=".join(versus), **summary(theirs, serial), "rounds_ahead": ahead}
    return {**report, **totals(started, load_at_start)}


def summary(figures: list[dict[str, Any]], serial: float | None) -> dict[str, Any]:
    """The rounds of one stack and their medians."""
    middle = sorted(figures, key=lambda f: f["rest_vs_bare_batched"] or 0)[len(figures) // 2]
    batched_median = statistics.median(f["bare_batched_images_per_s"] or 0.0 for f in figures)
    return {
        "rounds": [
            {
                "bare_batched_images_per_s": f["bare_batched_images_per_s"],
                "rest_images_per_s": f["rest"]["images_per_s"],
                "rest_vs_bare_batched": f["rest_vs_bare_batched"],
                "breakdown": f["breakdown"],
            }
            for f in figures
        ],
        "breakdown_medians": median_breakdown([f["breakdown"] for f in figures if f["breakdown"]]),
        "bare": {"serial_images_per_s": serial, "batched_images_per_s_median": batched_median},
        "rest": middle["rest"],  # the round of the median ratio
        "rest_vs_bare_batched": middle["rest_vs_bare_batched"],
        "rest_vs_bare_serial": ratio(middle["rest"]["images_per_s"], serial),
        "bare_batched_vs_serial": ratio(batched_median, serial),
    }


def main(argv: list[str] | None = None) -> None:
    parser = pipeline_parser("python -m bench.throughput", __doc__)
    parser.add_argument("--jobs", type=int, default=32, help="images (one-image jobs) per side (default 32)")
    parser.add_argument("--batch", type=int, default=4, help="bare batch size and EASEL_MAX_BATCH_SIZE")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of bare batched and REST (medians)")
    parser.add_argument(
        "--versus",
        metavar="EASEL_NAME=VALUE",
        help="also run each round with this setting (in turn first), and report both",
    )
    args = parser.parse_args(argv)
    if min(args.jobs, args.batch, args.steps, args.rounds) < 1 or args.size % 8:
        parser.error("--jobs, --batch, --steps and --rounds must be positive and --size a multiple of 8")
    versus = None
    if args.versus is not None:
        name, equals, value = args.versus.partition("=")
        if not equals or not name.startswith("EASEL_") or not value:
            parser.error(f"--versus takes EASEL_NAME=VALUE, not {args.versus!r}")
        versus = (name, value)
    exit_cleanly_on_sigterm()
    emit(run(args.jobs, args.batch, args.size, args.steps, pipeline_options(args), args.rounds, versus))


if __name__ == "__main__":
    main()
