"""The CUDA path: bare diffusers against the ``make run`` stack on an SD1.5-shaped pipeline.

    python -m bench.gpu                   # a CUDA machine: fp16, 512x512, 25 steps, Euler a
    python -m bench.gpu --tiny            # anywhere, in a minute: tiny-sd at 64x64
    python -m bench.gpu --stacks compile  # only the stack with EASEL_TORCH_COMPILE=true

No weights are downloaded: the pipeline has the real architecture of Stable Diffusion
1.5 (860M-parameter UNet, the 12-layer ViT-L text transformer, 84M VAE) and random
weights, so its speed is the real model's and its pictures are noise; its tokenizer is
tiny-sd's (a byte vocabulary, so the text encoder's embedding table is smaller). It is
saved once to ``--model-dir``.

1. bare: the pipeline in this process: two calls at each batch size from 1 to
   ``--batch`` (the first pays that size's set-up), ``--serial`` images one per call,
   then ``--jobs`` images in calls of ``--batch`` (one generator per image);
2. each of ``--stacks`` (``eager``; ``compile``: ``EASEL_TORCH_COMPILE=true`` warmed up at
   the benchmark's size): ``python -m easel run`` with its embedded defaults serving that
   model with ``EASEL_MAX_BATCH_SIZE=--batch``, and through REST a warm-up round of
   ``--batch`` jobs (it waits for the model load and any compile), ``--jobs`` jobs at
   once (e2e images/s from the first submit to the last ``finished_at``), then jobs
   that make batches of 1, 2 and 3 and a batch of another timestep dtype (DDIM), each
   of which would recompile a compiled UNet that the warm-up missed. The stack runs
   with ``TORCH_LOGS=recompiles``: the figures count the recompiles logged after the
   warm-up round.

Writes the figures to ``$OUT/result.json`` after every stage (so a run cut short keeps
what it measured) and each stack's log to ``$OUT/stack-<n>.log`` (n counts ``--stacks``
from 1); prints the JSON. Stops a stage at ``--budget`` seconds from the start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.processes import Stack, easel, start_process, wait_for

PROMPT = "a lighthouse on a cliff at dusk"
RECOMPILE_MARKS = ("Recompiling function", "recompile_limit")


class OutOfTime(Exception):
    """The run's ``--budget`` is spent."""


class Clock:
    """Seconds since the start, and the time left of the budget."""

    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.monotonic(), budget

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def log(clock: Clock, message: str) -> None:
    print(f"[gpu {clock.elapsed():6.1f}s] {message}", file=sys.stderr, flush=True)


def build_model(model_dir: Path, tiny: bool, dtype: Any) -> None:
    """Save tiny-sd (``tiny``) or an SD1.5-shaped random-weight pipeline to ``model_dir``."""
    from easel.worker.engine.tiny_model import build_tiny_pipeline, tiny_clip_config, tiny_unet

    pipe = build_tiny_pipeline()
    if not tiny:  # Stable Diffusion 1.5's shapes; tiny-sd's tokenizer, vocabulary and scheduler
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        unet = tiny_unet(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=512,
        )
        text = tiny_clip_config(
            len(pipe.tokenizer),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
        )
        parts = {"unet": unet, "vae": vae, "text_encoder": CLIPTextModel(text)}
        pipe = type(pipe)(**{**pipe.components, **parts}, requires_safety_checker=False)
    pipe.to(dtype).save_pretrained(model_dir)


def bare(model_dir: Path, args: argparse.Namespace, device: str, dtype: Any) -> dict[str, Any]:
    """Images/s of the bare pipeline, serial and batched, after one call of each shape."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def call(seeds: list[int]) -> float:
        started = time.perf_counter()
        pipe(
            prompt=[PROMPT] * len(seeds),
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            guidance_scale=7.0,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        )
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    # Each batch size's first call and a second one: what the first costs beyond the
    # second is the per-size set-up a worker's warm-up takes out of the jobs. The largest
    # size goes first, so its first call also pays the process's first-ever call.
    first_calls: dict[str, list[float]] = {}
    for size in [args.batch, *range(1, args.batch)]:
        seeds = list(range(size))
        first_calls[str(size)] = [round(call(seeds), 3), round(call(seeds), 3)]
    serial = sum(call([seed]) for seed in range(args.serial))
    batches = [call(list(range(s, s + args.batch))) for s in range(0, args.jobs, args.batch)]
    return {
        "bare_serial_img_s": round(args.serial / serial, 3) if args.serial else None,
        "bare_batched_img_s": round(args.jobs / sum(batches), 3),
        "bare_batch_seconds_median": round(statistics.median(batches), 3),
        "bare_first_and_second_call_seconds": first_calls,
    }


def submit(stack: Stack, count: int, seed: int, **fields: Any) -> list[str]:
    """``count`` one-image jobs with consecutive seeds from ``seed``: their ids."""
    return [stack.submit(**fields, seed=seed + i)["id"] for i in range(count)]


def wait(stack: Stack, ids: list[str], clock: Clock) -> list[dict[str, Any]]:
    """The jobs once all have finished; ``OutOfTime`` when the budget ends first."""
    try:
        return [stack.wait(job_id, timeout=max(clock.left(), 0.1)) for job_id in ids]
    except AssertionError:  # a job still unfinished (Stack.wait's message holds every log)
        raise OutOfTime("jobs unfinished when the budget ended") from None


def batches(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline calls that ran ``jobs``: size, start and generate seconds, in order."""
    seen: dict[str, dict[str, Any]] = {}
    for job in jobs:
        seen.setdefault(
            job["batch_id"] or job["id"],
            {
                "size": job["batch_size"],
                "started_at": job["started_at"],
                "generate_seconds": job["timings"].get("generate_seconds"),
            },
        )
    return sorted(seen.values(), key=lambda batch: batch["started_at"] or "")


def stack_settings(spec: str, size: int) -> dict[str, str]:
    """The environment of a ``--stacks`` entry: ``eager`` or ``compile``, then any
    ``+NAME=VALUE`` settings (``eager+EASEL_CHANNELS_LAST=false``)."""
    name, *pairs = spec.split("+")
    if name not in ("eager", "compile"):
        raise SystemExit(f"--stacks: {spec!r} starts with neither eager nor compile")
    # compile: before the first job (its warm-up round waits for it, as before the compile
    # cache); eager: off, now that CUDA compiles by default (EASEL_TORCH_COMPILE=auto)
    settings = {
        "EASEL_TORCH_COMPILE": "true",
        "EASEL_COMPILE_SHAPES": f"{size}x{size}",
        "EASEL_COMPILE_BACKGROUND": "false",
    }
    if name == "eager":
        settings = {"EASEL_TORCH_COMPILE": "false"}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise SystemExit(f"--stacks: {pair!r} in {spec!r} is not NAME=VALUE")
        settings[key] = value
    return settings


def run_stack(
    index: int, spec: str, model_dir: Path, args: argparse.Namespace, clock: Clock, out: Path
) -> dict[str, Any]:
    """Serve the model with ``easel run`` and time jobs through REST (module docstring)."""
    home = Path(tempfile.mkdtemp(prefix=f"easel-gpu-{index}-"))
    models_file = home / "models.toml"
    models_file.write_text(
        f'[models.sd15]\nsource = "directory"\nlocation = "{model_dir}"\nmin_size = 64\n'
        f"max_size = 1024\ndefault_size = {args.size}\ndefault_steps = {args.steps}\n"
        f"max_num_images = {args.batch}\n"
    )
    env = {
        **os.environ,
        "EASEL_HOME": str(home),
        "EASEL_PORT": str(args.port),
        "EASEL_MODELS_FILE": str(models_file),
        "EASEL_DEFAULT_MODEL": "sd15",
        "EASEL_MAX_BATCH_SIZE": str(args.batch),
        "EASEL_AUTH_ENABLED": "false",
        "EASEL_LOG_FORMAT": "text",
        "EASEL_RATE_LIMIT": "100000000/minute",
        "EASEL_SUBMIT_RATE_LIMIT": "100000000/minute",
        "EASEL_MAX_QUEUED_PER_KEY": "100000000",
        "TORCH_LOGS": "recompiles",
    }
    env |= stack_settings(spec, args.size)
    process = start_process(f"stack-{index}", easel("run"), env, out)
    stack = Stack(env=env, workdir=home, port=args.port, processes=[process])
    figures: dict[str, Any] = {}
    try:
        try:
            wait_for(
                lambda: not process.running() or stack.http.get(stack.base_url + "/readyz", timeout=5).ok,
                max(clock.left(), 0.1),
                "the stack to be ready",
            )
        except TimeoutError:
            raise OutOfTime("the stack was not ready when the budget ended") from None
        if not process.running():
            raise OutOfTime(f"the stack exited ({process.popen.returncode}) before it was ready")
        body = {"prompt": PROMPT, "width": args.size, "height": args.size, "steps": args.steps}
        body |= {"guidance_scale": 7.0, "scheduler": "euler_a"}
        log(clock, f"{spec}: ready; warm-up round")
        started = time.perf_counter()
        wait(stack, submit(stack, args.batch, 0, **body), clock)
        figures["warmup_round_seconds"] = round(time.perf_counter() - started, 1)
        warm_log = process.log()
        figures["warm_up_lines"] = [line for line in warm_log.splitlines() if "warmed up" in line]
        figures["recompiles_in_warm_up"] = sum(warm_log.count(mark) for mark in RECOMPILE_MARKS)
        log(clock, f"{spec}: {args.jobs} jobs")
        submitted = datetime.now().astimezone()
        jobs = wait(stack, submit(stack, args.jobs, 1000, **body), clock)
        last = max(datetime.fromisoformat(job["finished_at"]) for job in jobs)
        figures["e2e_img_s"] = round(args.jobs / (last - submitted).total_seconds(), 3)
        figures["statuses"] = sorted({job["status"] for job in jobs})
        figures["batches"] = batches(jobs)
        odd: list[dict[str, Any]] = []
        rounds = ((1, "euler_a"), (2, "euler_a"), (3, "euler_a"), (args.batch, "ddim"))
        log(clock, f"{spec}: batches of 1, 2, 3 and one of DDIM" if args.odd_batches else f"{spec}: done")
        for count, scheduler in rounds if args.odd_batches else ():
            done = wait(stack, submit(stack, count, 2000 + count, **(body | {"scheduler": scheduler})), clock)
            odd += [batch | {"scheduler": scheduler} for batch in batches(done)]
        figures["odd_batches"] = odd
    except OutOfTime as exc:
        figures["stopped"] = str(exc)
    finally:
        process.stop(signal.SIGINT)  # Ctrl-C, as `easel run` expects; SIGKILL after 30 s
        shutil.rmtree(home, ignore_errors=True)
    text = process.log()
    figures["recompiles_after_warm_up"] = sum(text.count(mark) for mark in RECOMPILE_MARKS) - figures.get(
        "recompiles_in_warm_up", 0
    )
    errors = [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line]
    figures["error_lines"] = errors[:5]
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny-sd at 64x64 (a dry run)")
    parser.add_argument(
        "--stacks",
        default="eager,compile",
        help="comma-separated: eager or compile, each with any +NAME=VALUE settings",
    )
    parser.add_argument(
        "--no-odd-batches", dest="odd_batches", action="store_false", help="skip batches of 1, 2, 3, DDIM"
    )
    parser.add_argument("--jobs", type=int, default=32, help="one-image jobs (and bare images) per stack")
    parser.add_argument("--batch", type=int, default=4, help="bare batch size and EASEL_MAX_BATCH_SIZE")
    parser.add_argument("--serial", type=int, default=8, help="bare images one per call (0: none)")
    parser.add_argument("--size", type=int, help="width and height (512; 64 with --tiny)")
    parser.add_argument("--steps", type=int, help="denoising steps (25; 4 with --tiny)")
    parser.add_argument("--port", type=int, default=8765, help="the stack's web port")
    parser.add_argument("--model-dir", type=Path, help="where the pipeline is saved (kept between runs)")
    parser.add_argument("--bare-batched", type=float, help="skip the bare part: its batched img/s")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds before stages stop")
    args = parser.parse_args(argv)
    specs = args.stacks.split(",")
    for spec in specs:
        stack_settings(spec, 0)  # a bad entry fails before anything runs
    args.size = args.size or (64 if args.tiny else 512)
    args.steps = args.steps or (4 if args.tiny else 25)
    clock = Clock(args.budget)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="easel-gpu-out-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        **{key: getattr(args, key) for key in ("size", "steps", "jobs", "batch")},
    }

    def save() -> None:
        (out / "result.json").write_text(json.dumps(figures, indent=1))

    model_dir = args.model_dir or Path(tempfile.gettempdir()) / f"easel-gpu-{'tiny' if args.tiny else 'sd15'}"
    if not (model_dir / "model_index.json").exists():
        build_model(model_dir, args.tiny, dtype)
    log(clock, f"model at {model_dir}")
    if args.bare_batched:
        figures["bare_batched_img_s"] = args.bare_batched
    else:
        figures |= bare(model_dir, args, device, dtype)
        if device == "cuda":
            torch.cuda.empty_cache()  # the bare pipeline is gone with bare()'s frame
    log(clock, f"bare: {figures}")
    save()
    for index, spec in enumerate(specs, 1):
        stack = run_stack(index, spec, model_dir, args, clock, out)
        if "e2e_img_s" in stack:
            stack["e2e_over_bare_batched"] = round(stack["e2e_img_s"] / figures["bare_batched_img_s"], 3)
        figures[spec] = stack
        save()
        log(clock, f"{spec}: {json.dumps(stack)}")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
