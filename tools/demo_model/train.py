"""Train ``demo-shapes``: the VAE first, then the text encoder and UNet together.

``python -m tools.demo_model --out DIR`` writes a diffusers folder (``save_pretrained``,
safetensors, fp16) and ``<DIR>.log``; ``--preset cpu`` (the default on the CPU) fits in
about an hour on two cores, ``--preset gpu`` is the committed weights' configuration,
``--tiny`` runs a few steps of small models to check the code. Everything is seeded: the
same arguments give the same model on the same machine (CPU and CUDA kernels differ in
their last bits, so not across them). A deadline (the cpu preset's hour) makes the UNet's
step count depend on the machine's speed; the log and ``training.json`` record it, and
``--unet-steps N --deadline 0`` repeats a run exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tools.demo_model import build
from tools.demo_model.world import caption_variant, random_scene, render


@dataclass(frozen=True)
class Config:
    """One training run; the defaults are the committed model's."""

    seed: int = 0
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = 3020
    unet_batch: int = 128
    unet_width: int = 48
    unet_lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.15
    plain_fraction: float = 0.1
    large_every: int = 8  # every Nth UNet batch is 128x128 pixels (a quarter as many images)
    deadline: float = 0.0  # seconds; >0: fewer UNet steps if the planned ones would not fit
    tiny: bool = False


TINY = Config(
    vae_steps=6, vae_batch=4, unet_steps=8, unet_batch=4, unet_width=16, warmup=2, large_every=4, tiny=True
)

PRESETS: dict[str, Config] = {
    # The committed weights (one GPU, 275 s): a 3.7M-parameter UNet, 386k training pictures.
    "gpu": Config(),
    # At most an hour on two CPU cores (docs/models.md): a shorter VAE run and a
    # 1.7M-parameter UNet that sees as many pictures per step; the deadline trims the
    # UNet's steps to what fits (1,748 of 2,600 on this project's 2-core machine).
    "cpu": Config(vae_steps=1200, unet_steps=2600, unet_width=32, deadline=3600.0),
    "tiny": TINY,
}


def scene_batch(rng: random.Random, count: int, size: int, plain_fraction: float) -> tuple[Any, list[str]]:
    """``count`` rendered scenes as a tensor in [-1, 1] (N, 3, size, size) and their captions."""
    import numpy as np
    import torch

    scenes = [random_scene(rng, plain_fraction) for _ in range(count)]
    pixels = np.stack([np.asarray(render(scene, size)) for scene in scenes]).astype(np.float32)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1.0
    return tensor, [caption_variant(scene, rng) for scene in scenes]


def step_batch(config: Config, kind: str, step: int) -> tuple[Any, list[str]]:
    """The batch of training step ``step`` of ``kind`` ("vae" or "unet"), seeded by the step
    alone, so the data is the same however many processes render it."""
    rng = random.Random(f"{config.seed}-{kind}-{step}")
    if kind == "vae":
        return scene_batch(rng, config.vae_batch, 64, config.plain_fraction)
    large = config.large_every > 0 and step % config.large_every == config.large_every - 1
    size, count = (128, max(1, config.unet_batch // 4)) if large else (64, config.unet_batch)
    images, captions = scene_batch(rng, count, size, config.plain_fraction)
    return images, ["" if rng.random() < config.caption_dropout else caption for caption in captions]


def batches(config: Config, kind: str, workers: int) -> Any:
    """Step batches in order, endless; ``workers`` > 0 renders them in that many processes."""
    import itertools

    if workers <= 0:
        return (step_batch(config, kind, step) for step in itertools.count())
    import torch

    class Steps(torch.utils.data.IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            info = torch.utils.data.get_worker_info()
            for step in itertools.count(info.id, info.num_workers):
                yield step_batch(config, kind, step)

    # The loader takes one item from each worker in turn: steps stay in order.
    # Its own generator: a loader draws a seed, which must not move the global one.
    loader = torch.utils.data.DataLoader(
        Steps(), batch_size=None, num_workers=workers, prefetch_factor=4, generator=torch.Generator()
    )
    return iter(loader)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Log:
    """Lines to stdout and to ``train.log`` in the output folder."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a")
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.started:8.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def train_vae(config: Config, device: str, rng: random.Random, log: Log, workers: int) -> Any:
    import torch

    vae = build.make_vae(config.tiny).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    log(f"vae: {build.parameters(vae):,} parameters, {config.vae_steps} steps of {config.vae_batch}")
    data = batches(config, "vae", workers)
    for step in range(config.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.vae_steps, config.vae_lr, config.warmup)
        images, _ = next(data)
        images = images.to(device)
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(decoded, images)
        loss = mse + (decoded - images).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == config.vae_steps - 1:
            psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
            log(f"vae step {step}: loss {loss.item():.4f}, psnr {psnr:.1f} dB")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        images, _ = scene_batch(rng, 8 if config.tiny else 64, 64, config.plain_fraction)
        latents = vae.encode(images.to(device)).latent_dist.sample()
        decoded = vae.decode(vae.encode(images.to(device)).latent_dist.mode()).sample.clamp(-1, 1)
        psnr = 10 * math.log10(4.0 / torch.nn.functional.mse_loss(decoded, images.to(device)).item())
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    log(f"vae done: held-out psnr {psnr:.1f} dB, latent std {1 / scaling:.3f} -> scaling {scaling:.4f}")
    return vae


def train_unet(
    config: Config, device: str, vae: Any, log: Log, started: float, workers: int
) -> tuple[Any, Any, Any, int]:
    import copy

    import torch

    tokenizer = build.make_tokenizer()
    text_encoder = build.make_text_encoder(len(tokenizer)).to(device)
    unet = build.make_unet(config.unet_width).to(device)
    scheduler = build.training_scheduler()
    alphas = scheduler.alphas_cumprod.to(device)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-2)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    ema_params = [*ema_unet.parameters(), *ema_text.parameters()]
    scaling = vae.config.scaling_factor
    log(
        f"unet: {build.parameters(unet):,} parameters, text encoder {build.parameters(text_encoder):,}, "
        f"{config.unet_steps} steps of {config.unet_batch}"
    )
    total = config.unet_steps
    data = batches(config, "unet", workers)
    step, loop_started = 0, time.perf_counter()
    while step < total:
        if config.deadline and step == 100:
            # Early (still warming up), so the shortened cosine schedule stays whole.
            per_step = (time.perf_counter() - loop_started) / step
            left = config.deadline - (time.perf_counter() - started) - 20.0
            fits = 100 + int(left / per_step)
            if fits < total:
                log(f"deadline {config.deadline:.0f}s: {per_step * 1e3:.1f} ms/step, {total} -> {fits} steps")
                total = fits
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, config.unet_lr, config.warmup)
        images, captions = next(data)
        count = len(captions)
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with torch.no_grad():
            latents = vae.encode(images.to(device)).latent_dist.sample() * scaling
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (count,), device=device)
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        noisy, target = a * latents + s * noise, a * noise - s * latents  # v-prediction
        hidden = text_encoder(ids.input_ids.to(device))[0]
        prediction = unet(noisy, t, hidden).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        if step % 200 == 0 or step == total - 1:
            log(f"unet step {step}: loss {loss.item():.4f}, lr {optimizer.param_groups[0]['lr']:.2e}")
        step += 1
    return tokenizer, ema_text.eval(), ema_unet.eval(), total


def train(config: Config, out: Path, device: str = "cpu", workers: int = 0) -> Path:
    """Train and save the pipeline under ``out``; returns the folder."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    log = Log(out.parent / f"{out.name}.log")
    log(f"config {json.dumps(asdict(config))} on {device}, torch threads {torch.get_num_threads()}")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    started = time.perf_counter()
    vae = train_vae(config, device, rng, log, workers)
    vae_seconds = time.perf_counter() - started
    tokenizer, text_encoder, unet, unet_steps_run = train_unet(config, device, vae, log, started, workers)
    seconds = time.perf_counter() - started
    pipeline = build.assemble(tokenizer, text_encoder, unet, vae).to("cpu", torch.float16)
    pipeline.save_pretrained(str(out), safe_serialization=True)
    (out / "training.json").write_text(
        json.dumps(
            {
                "config": asdict(config),
                "device": device,
                "vae_seconds": round(vae_seconds, 1),
                "seconds": round(seconds, 1),
                "unet_steps_run": unet_steps_run,
                "torch": torch.__version__,
            },
            indent=2,
        )
        + "\n"
    )
    log(f"saved {out} after {seconds:.0f}s (vae {vae_seconds:.0f}s)")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_model", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the pipeline to")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="base configuration (default: by --device)")
    parser.add_argument("--tiny", action="store_true", help="a few steps of small models (--preset tiny)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch decides)")
    parser.add_argument("--workers", type=int, default=0, help="processes that render training images")
    parser.add_argument("--deadline", type=float, default=None, help="seconds the run may take (fewer steps)")
    fields = ("seed", "vae_steps", "vae_batch", "unet_steps", "unet_batch", "unet_width", "deadline")
    for field in fields[:-1]:
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=None)
    args = parser.parse_args(argv)
    import dataclasses

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "tiny" if args.tiny else args.preset or ("cpu" if args.device == "cpu" else "gpu")
    config = PRESETS[preset]
    overrides = {field: getattr(args, field) for field in fields}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    train(config, args.out, args.device, args.workers)
