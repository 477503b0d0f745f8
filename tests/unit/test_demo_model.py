"""The demo model ``demo-shapes``: its world, its training code, and whether it draws
what it is told (the quality targets of ``bench/demo_quality.py``, with fresh seeds)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from easel.shared.registry import DEMO_MODEL_DIR, ModelSource, demo_spec, load_registry
from easel.shared.settings import Settings
from tools.demo_model import evaluate
from tools.demo_model.world import COLORS, SHAPES, judge, parse_caption, random_scene, render


@pytest.fixture(scope="module")
def demo_pipe() -> Any:
    """The committed model, loaded by Easel's directory loader on the CPU in float32."""
    from easel.worker.engine.device import DevicePlan
    from easel.worker.engine.pipelines import load_pipeline

    return load_pipeline(demo_spec(), DevicePlan("cpu", "float32"))


@pytest.mark.parametrize("size", [64, 128])
def test_the_judge_reads_rendered_scenes_back(size: int) -> None:
    rng = random.Random(size)
    scenes = [random_scene(rng, plain_fraction=0.0) for _ in range(150)]
    verdicts = [judge(render(scene, size)) for scene in scenes]
    assert [(v.bg, v.fg, v.shape) for v in verdicts] == [(s.bg, s.fg, s.shape) for s in scenes]


def test_the_judge_sees_no_shape_on_a_plain_background() -> None:
    verdict = judge(render(parse_caption("a green background")))
    assert (verdict.bg, verdict.fg, verdict.shape) == ("green", None, None)


def test_captions_parse_back_and_others_are_refused() -> None:
    scene = parse_caption("a red circle on a blue background")
    assert (scene.fg, scene.shape, scene.bg) == ("red", "circle", "blue")
    with pytest.raises(ValueError, match="a purple cat"):
        parse_caption("a purple cat")


def test_every_word_of_the_world_is_one_token() -> None:
    from tools.demo_model.build import make_tokenizer

    tokenizer = make_tokenizer()
    for word in ["a", "on", "background", *COLORS, *SHAPES]:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert tokenizer.model_max_length == 77


def test_the_registry_serves_the_committed_folder() -> None:
    spec = load_registry(Settings(models_file=None)).get("demo-shapes")
    assert spec.source is ModelSource.DIRECTORY and Path(spec.location) == DEMO_MODEL_DIR
    assert (spec.default_size, spec.max_size) == (64, 128)
    files = [p for p in DEMO_MODEL_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in {".safetensors", ".bin", ".ckpt", ".pt"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) < 20 * 1024 * 1024
    assert json.loads((DEMO_MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())[
        "rescale_betas_zero_snr"
    ]


def test_training_runs_end_to_end_and_saves_a_loadable_pipeline(tmp_path: Path) -> None:
    from tools.demo_model.train import TINY, train

    folder = train(TINY, tmp_path / "demo")
    assert (tmp_path / "demo.log").read_text().count("unet step") >= 2
    pipe = evaluate.load(folder)
    images = evaluate.generate(pipe, ["a red circle on a blue background"], [1], steps=2, size=64)
    assert images[0].size == (64, 64)


def test_draws_what_it_is_told(demo_pipe: Any) -> None:
    """48 random prompts with fresh seeds meet the targets (foreground 85%, background
    90%, shape 70%); a failure names the seed to repeat it with. 10 DDIM steps keep it
    cheap (``bench/demo_quality.py`` runs the model's defaults)."""
    seed = random.SystemRandom().randrange(2**31)
    quality = evaluate.quality(demo_pipe, 48, seed, steps=10, scheduler="ddim", guidance=7.0)
    assert quality.passed(), f"seed {seed}: {quality.rates}\n" + "\n".join(quality.misses())


def test_inpaints_a_red_square_into_the_mask_and_keeps_the_rest(demo_pipe: Any) -> None:
    seeds = [random.SystemRandom().randrange(2**31) for _ in range(4)]
    colours, changes = evaluate.inpaint_red_square(demo_pipe, seeds, steps=10, scheduler="ddim")
    assert sum(colour == "red" for colour in colours) >= 3, (seeds, colours)
    assert changes == [0, 0, 0, 0]
