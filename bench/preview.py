"""Live previews' cost: the same jobs through the worker's runner with previews on and off.

    python -m bench.preview --jobs 16 --size 64 --steps 20 --interval 1.0 --rounds 3

One ``JobRunner`` (the worker's code path: claim, generate with the step callback,
store, record) on SQLite and a local folder, with the locally built tiny-sd, runs
``--jobs`` queued jobs of one image each, batched by ``--batch``, once with previews
off (``preview_interval=0``) and once with them on (``--interval`` seconds), in
alternating order for ``--rounds`` rounds, so that load on a shared machine weighs on
both alike. Prints one JSON object: images/s of each round and mode, the medians,
``on_off_ratio`` (median on / median off; 1.0 is free, 0.95 is a 5 % cost) and the
previews written; progress goes to stderr.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench._stack import Timer, bench_parser, build_tiny_model, emit, machine, progress, rate


def make_runner(home: Path, model: Path, batch: int, interval: float) -> Any:
    from sqlalchemy.orm import sessionmaker

    from easel.migrations.upgrade import upgrade
    from easel.shared.db import make_engine
    from easel.shared.registry import ModelSource, ModelSpec, Registry
    from easel.shared.storage import LocalStorage
    from easel.worker.engine.device import DevicePlan
    from easel.worker.engine.pipelines import PipelineCache, load_pipeline
    from easel.worker.engine.runner import JobRunner

    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{home / 'bench.db'}"
    upgrade(url)
    spec = ModelSpec(
        name="tiny-sd", source=ModelSource.TINY, location=str(model), default_size=64, max_size=512
    )
    return JobRunner(
        sessions=sessionmaker(make_engine(url), expire_on_commit=False),
        registry=Registry([spec], "tiny-sd"),
        storage=LocalStorage(home / "outputs"),
        cache=PipelineCache(loader=lambda s: load_pipeline(s, DevicePlan("cpu", "float32"))),
        worker_id="bench:1",
        models=["tiny-sd"],
        max_batch_images=batch,
        overlap_store=True,  # as `easel worker` runs
        preview_interval=interval,
    )


def enqueue(runner: Any, count: int, size: int, steps: int, seed: int) -> None:
    from easel.shared.jobs import create_job
    from easel.shared.schemas import parse_job_request, resolve_job
    from easel.shared.settings import Settings

    settings = Settings()
    with runner.sessions() as session:
        for index in range(count):
            fields = {"prompt": f"a lighthouse {index}", "width": size, "height": size, "steps": steps}
            request = parse_job_request({**fields, "seed": seed + index, "scheduler": "euler"})
            create_job(session, resolve_job(request, runner.registry, settings))
        session.commit()


def run_all(runner: Any) -> None:
    """Run every queued job (batch by batch) and wait until the last outputs are stored."""
    while runner.run_next() is not None:
        pass
    runner.drain()


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(None, __doc__)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="EASEL_PREVIEW_INTERVAL_SECONDS when on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="easel-bench-preview-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root)
        runners = {
            "off": make_runner(root / "off", model, args.batch, 0.0),
            "on": make_runner(root / "on", model, args.batch, args.interval),
        }
        for runner in runners.values():  # warm-up: load the model, first calls of each shape
            enqueue(runner, args.batch + 1, args.size, args.steps, 1)
            run_all(runner)
        rounds: dict[str, list[float]] = {"off": [], "on": []}
        for number in range(args.rounds):
            order = ("off", "on") if number % 2 == 0 else ("on", "off")
            for name in order:
                runner = runners[name]
                enqueue(runner, args.jobs, args.size, args.steps, 1000 + number * args.jobs)
                with Timer() as timer:
                    run_all(runner)
                rounds[name].append(rate(args.jobs, timer.seconds) or 0.0)
                progress(f"round {number + 1} {name}: {rounds[name][-1]:.2f} images/s")
        previews = runners["on"]._previews
        off, on = statistics.median(rounds["off"]), statistics.median(rounds["on"])
        emit(
            {
                "benchmark": "preview",
                "jobs": args.jobs,
                "size": args.size,
                "steps": args.steps,
                "batch": args.batch,
                "interval_seconds": args.interval,
                "threads": torch.get_num_threads(),
                "images_per_s": rounds,
                "off_images_per_s": round(off, 3),
                "on_images_per_s": round(on, 3),
                "on_off_ratio": round(on / off, 3) if off else None,
                "previews_written": previews.written if previews is not None else 0,
                "machine": machine(load),
            }
        )


if __name__ == "__main__":
    main()
