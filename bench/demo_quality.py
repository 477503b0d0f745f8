"""Does the demo model draw what it is told? Figures for ``demo-shapes``.

    python -m bench.demo_quality [--prompts 48] [--seed N] [--model DIR]

Generates ``--prompts`` random prompts of the world (``"a {color} {shape} on a
{color} background"``) with fresh seeds (``--seed`` repeats a run) at the model's
defaults, judges each picture by its colours and how much of its bounding box the
shape fills (``tools.demo_model.world.judge``), and inpaints ``"a red square"`` into
the masked centre of a blue picture with 4 seeds. Prints one JSON object: the share
of pictures whose foreground colour, background colour and shape match, the targets
(85%, 90%, 70%), the inpainting count (target 3 of 4) and the largest change of an
unmasked pixel (target 0), then one line per miss on stderr. Exits 1 below a target.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from easel.shared.registry import DEMO_MODEL_DIR, demo_spec
from tools.demo_model import evaluate


def main(argv: list[str] | None = None) -> int:
    spec = demo_spec()
    parser = argparse.ArgumentParser(prog="python -m bench.demo_quality", description=__doc__)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR, help="a demo-shapes folder")
    parser.add_argument("--prompts", type=int, default=48, help="random prompts to judge")
    parser.add_argument("--seed", type=int, default=None, help="repeat a run (default: fresh)")
    parser.add_argument("--steps", type=int, default=spec.default_steps)
    parser.add_argument("--guidance", type=float, default=spec.default_guidance_scale)
    parser.add_argument("--scheduler", default=spec.default_scheduler)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch decides)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    options = {"steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler}
    started = time.perf_counter()
    pipe = evaluate.load(args.model)
    quality = evaluate.quality(pipe, args.prompts, seed, **options)
    rng = random.Random(seed + 1)
    colours, changes = evaluate.inpaint_red_square(pipe, [rng.randrange(2**31) for _ in range(4)], **options)
    inpainted = sum(colour == "red" for colour in colours)
    passed = quality.passed() and inpainted >= 3 and max(changes) == 0
    report = {
        "model": str(args.model),
        "seed": seed,
        "prompts": args.prompts,
        **options,
        "foreground": round(quality.rates["foreground"], 3),
        "background": round(quality.rates["background"], 3),
        "shape": round(quality.rates["shape"], 3),
        "targets": evaluate.TARGETS,
        "inpaint_red_centre": f"{inpainted}/4",
        "inpaint_centre_colours": colours,
        "inpaint_max_unmasked_change": max(changes),
        "seconds_per_image": round(quality.seconds / args.prompts, 3),
        "seconds": round(time.perf_counter() - started, 1),
        "passed": passed,
    }
    print(json.dumps(report, indent=2))
    for line in quality.misses():
        print("miss:", line, file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
