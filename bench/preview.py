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

    python -m bench.preview --mode hires --size 64 --hires-scale 2 --steps 20 --strength 0.5 --rounds 5

``--mode hires`` weighs a hires fix against the two jobs it stands for, on one runner
(batches of one, previews off): one txt2img job at ``--size`` with a hires fix to
``--size`` x ``--hires-scale`` (``--upscaler``; a second pass of ``--steps`` at
``--strength``), against a txt2img job at ``--size`` plus an img2img job at the target
size with the same steps and strength, its input the size of the hires fix's target.
Each round runs the hires job and the two separate jobs one at a time (which goes first
alternates), and times each job's wall time (claim to stored); it prints each round's
seconds per job and ``hires_over_separate`` (hires job / the two jobs together), with
the medians, and each job's ``generate_seconds`` (its pipeline calls) as the runner
recorded them. Each job's CPU time (this process's, all threads) is reported beside
its wall time, with ``cpu_hires_over_separate``: on a machine shared with other work the
wall times swing, the CPU times much less.
"""

from __future__ import annotations

import statistics
import tempfile
import time
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


def enqueue_one(runner: Any, fields: dict[str, Any], image: Any = None) -> str:
    """Queue one job of ``fields`` (an img2img one with ``image`` stored as its input, as
    the web tier stores uploads); its id."""
    from easel.shared.images import encode_png_bytes
    from easel.shared.jobs import create_job, input_key
    from easel.shared.models import new_job_id
    from easel.shared.schemas import JobInputs, parse_job_request, resolve_job
    from easel.shared.settings import Settings

    job_id = new_job_id()
    keys: dict[str, str] = {}
    if image is not None:
        keys["input_key"] = input_key(job_id, "image")
        runner.storage.put(keys["input_key"], encode_png_bytes(image), "image/png")
    resolved = resolve_job(parse_job_request(fields), runner.registry, Settings(), JobInputs(image=image))
    with runner.sessions() as session:
        create_job(session, resolved, job_id=job_id, input_keys=keys)
        session.commit()
    return job_id


def timed_job(runner: Any, fields: dict[str, Any], image: Any = None) -> tuple[float, float, float]:
    """Run one job of ``fields`` alone: its wall time (queued to stored), the CPU time of
    this process meanwhile (all its threads: less swayed by other work on the machine)
    and the ``generate_seconds`` the runner recorded; a job that did not succeed stops
    the run."""
    from easel.shared.models import Job

    job_id = enqueue_one(runner, fields, image)
    cpu = time.process_time()
    with Timer() as timer:
        run_all(runner)
    cpu = time.process_time() - cpu
    with runner.sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "succeeded":
            raise SystemExit(f"job {fields} did not succeed: {job.error_message if job else 'missing'}")
        return timer.seconds, cpu, float((job.timings or {}).get("generate_seconds") or 0.0)


def hires_jobs(args: Any, seed: int) -> dict[str, tuple[dict[str, Any], Any]]:
    """The hires job and the two separate jobs it stands for (with the img2img job's input)."""
    from PIL import Image

    target = int(args.size * args.hires_scale)
    common = {"prompt": "a lighthouse", "steps": args.steps, "seed": seed, "scheduler": "euler"}
    hires = {"scale": args.hires_scale, "upscaler": args.upscaler, "denoising_strength": args.strength}
    base = {**common, "width": args.size, "height": args.size}
    image = Image.new("RGB", (target, target), (90, 120, 200))
    return {
        "hires": ({**base, "hires": {**hires, "steps": args.steps}}, None),
        "txt2img": (base, None),
        "img2img": ({**common, "type": "img2img", "strength": args.strength}, image),
    }


def medians(figures: dict[str, list[float]]) -> dict[str, float]:
    return {name: round(statistics.median(values), 3) for name, values in figures.items()}


def run_hires(args: Any, load: float) -> None:
    import torch

    with tempfile.TemporaryDirectory(prefix="easel-bench-hires-") as tmp:
        root = Path(tmp)
        runner = make_runner(root / "hires", build_tiny_model(root), 1, 0.0)
        for fields, image in hires_jobs(args, 1).values():  # warm-up: load both pipelines, each shape
            timed_job(runner, fields, image)
        seconds: dict[str, list[float]] = {"hires": [], "txt2img": [], "img2img": [], "separate": []}
        cpu: dict[str, list[float]] = {"hires": [], "txt2img": [], "img2img": [], "separate": []}
        generate: dict[str, list[float]] = {"hires": [], "txt2img": [], "img2img": []}
        ratios: list[float] = []
        cpu_ratios: list[float] = []
        for number in range(args.rounds):
            jobs = hires_jobs(args, 1000 + number)
            order = ("hires", "txt2img", "img2img") if number % 2 == 0 else ("txt2img", "img2img", "hires")
            for name in order:
                wall, used, calls = timed_job(runner, *jobs[name])
                seconds[name].append(round(wall, 3))
                cpu[name].append(round(used, 3))
                generate[name].append(round(calls, 3))
            separate = seconds["txt2img"][-1] + seconds["img2img"][-1]
            seconds["separate"].append(round(separate, 3))
            ratios.append(round(seconds["hires"][-1] / separate, 3))
            cpu["separate"].append(round(cpu["txt2img"][-1] + cpu["img2img"][-1], 3))
            cpu_ratios.append(round(cpu["hires"][-1] / cpu["separate"][-1], 3))
            hires_s, txt2img_s, img2img_s = (seconds[name][-1] for name in ("hires", "txt2img", "img2img"))
            progress(
                f"round {number + 1}: hires {hires_s:.3f} s, txt2img {txt2img_s:.3f} s"
                f" + img2img {img2img_s:.3f} s = {separate:.3f} s; ratio {ratios[-1]:.3f}"
                f" (CPU time {cpu_ratios[-1]:.3f})"
            )
        emit(
            {
                "benchmark": "preview",
                "mode": "hires",
                "size": args.size,
                "target": int(args.size * args.hires_scale),
                "steps": args.steps,
                "strength": args.strength,
                "upscaler": args.upscaler,
                "threads": torch.get_num_threads(),
                "seconds": seconds,
                "cpu_seconds": cpu,
                "generate_seconds": generate,
                "hires_over_separate": ratios,
                "cpu_hires_over_separate": cpu_ratios,
                "median_seconds": medians(seconds),
                "median_cpu_seconds": medians(cpu),
                "median_generate_seconds": medians(generate),
                "median_hires_over_separate": round(statistics.median(ratios), 3),
                "median_cpu_hires_over_separate": round(statistics.median(cpu_ratios), 3),
                "machine": machine(load),
            }
        )


def run_all(runner: Any) -> None:
    """Run every queued job (batch by batch) and wait until the last outputs are stored."""
    while runner.run_next() is not None:
        pass
    runner.drain()


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(None, __doc__)
    parser.add_argument("--mode", choices=("preview", "hires"), default="preview")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="EASEL_PREVIEW_INTERVAL_SECONDS when on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--hires-scale", type=float, default=2.0, help="hires: the target size / --size")
    parser.add_argument("--strength", type=float, default=0.5, help="hires: the second pass's strength")
    parser.add_argument("--upscaler", default="latent", help="hires: latent, or an upscaler (lanczos)")
    args = parser.parse_args(argv)
    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    if args.mode == "hires":
        run_hires(args, load)
        return
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
