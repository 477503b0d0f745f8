"""The GPU fast path: its choices, tested without a GPU, and applying it leaves the tiny pipeline working."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from easel.shared.registry import ModelSource, ModelSpec
from easel.shared.settings import Settings, parse_shapes
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.fastpath import (
    FastPathPlan,
    apply_fast_path,
    compile_unet,
    plan_fast_path,
    set_vae_tiling,
    use_vae_tiling,
    warm_up,
    warm_up_shapes,
)
from easel.worker.engine.generate import generate_batch, make_scheduler, with_scheduler
from easel.worker.engine.pipelines import PipelineCache, load_pipeline
from easel.worker.process import preload, warm_up_batch_sizes
from tests.factories import generate_one, generation_request


def is_compiled(module: Any) -> bool:
    """Whether ``module`` was compiled (in place with ``Module.compile`` or wrapped)."""
    return getattr(module, "_compiled_call_impl", None) is not None or hasattr(module, "_orig_mod")


CPU = DevicePlan("cpu", "float32")
CUDA = DevicePlan("cuda:0", "float16")


# --- choices ---------------------------------------------------------------------------------


def test_cpu_gets_sdpa_and_compile_when_asked_but_no_channels_last_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``EASEL_TORCH_COMPILE=true`` compiles on the CPU too (inductor's CPU backend)."""
    with caplog.at_level(logging.INFO, logger="easel.worker.engine.fastpath"):
        plan = plan_fast_path(CPU, channels_last=True, torch_compile=True)
    assert (plan.sdpa, plan.channels_last, plan.compile) == (True, False, True)
    assert "channels_last skipped: CUDA only (device cpu)" in caplog.text
    assert "torch.compile skipped" not in caplog.text
    assert len(plan.reasons) == 1


def test_cpu_with_nothing_asked_has_nothing_to_explain() -> None:
    assert plan_fast_path(CPU, channels_last=False, torch_compile=False).reasons == ()


@pytest.mark.parametrize(
    ("channels_last", "torch_compile"), [(True, False), (True, True), (False, True), (False, False)]
)
def test_cuda_follows_the_settings(channels_last: bool, torch_compile: bool) -> None:
    plan = plan_fast_path(CUDA, channels_last=channels_last, torch_compile=torch_compile)
    assert plan == FastPathPlan(sdpa=True, channels_last=channels_last, compile=torch_compile)


def test_no_sdpa_in_torch_keeps_default_attention() -> None:
    plan = plan_fast_path(CUDA, sdpa_available=False)
    assert not plan.sdpa and "SDPA attention unavailable" in plan.reasons[0]


@pytest.mark.parametrize(
    ("text", "shapes"),
    [
        ("512x512,768x512", [(512, 512), (768, 512)]),
        (" 512X768 , 64x64,", [(512, 768), (64, 64)]),
        ("512x512,512x512", [(512, 512)]),
        ("", []),
    ],
)
def test_parse_shapes(text: str, shapes: list[tuple[int, int]]) -> None:
    assert parse_shapes(text) == shapes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("512", "compile shape '512' is not WIDTHxHEIGHT"),
        ("512x512,foo", "compile shape 'foo' is not WIDTHxHEIGHT"),
        ("512x", "compile shape '512x'"),
        ("-8x512", "compile shape '-8x512'"),
        ("0x512", "'0x512': width and height must be positive multiples of 8"),
        ("513x512", "'513x512': width and height must be positive multiples of 8"),
    ],
)
def test_parse_shapes_names_the_bad_value(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_shapes(text)


@pytest.mark.parametrize(
    ("width", "height", "pixels", "tiled"),
    [
        (1024, 1024, 1024 * 1024, True),  # at the threshold
        (1024, 1016, 1024 * 1024, False),  # just under
        (1536, 1024, 1024 * 1024, True),
        (4096, 4096, 0, False),  # 0 = never
        (64, 64, 4096, True),
    ],
)
def test_vae_tiling_threshold(width: int, height: int, pixels: int, tiled: bool) -> None:
    assert use_vae_tiling(width, height, pixels) is tiled


# --- on the real tiny pipeline ----------------------------------------------------------------


def load(folder: Path) -> Any:
    spec = ModelSpec(name="t", source=ModelSource.DIRECTORY, location=str(folder), default_size=256)
    return load_pipeline(spec, CPU, channels_last=False, torch_compile=False)


def run(pipe: Any, size: int = 64) -> np.ndarray:
    req = generation_request(
        prompt="a green hill",
        negative_prompt="",
        width=size,
        height=size,
        steps=2,
        guidance_scale=7.5,
        scheduler="euler",
        seeds=(5,),
    )
    [image] = generate_one(pipe, req)
    assert image.size == (size, size)
    return np.asarray(image, dtype=np.int16)


def processors(pipe: Any) -> Counter[str]:
    return Counter(type(p).__name__ for p in pipe.unet.attn_processors.values())


def test_diffusers_already_uses_sdpa_and_the_cpu_plan_changes_nothing(tiny_model: Path) -> None:
    pipe = load(tiny_model)
    before = run(pipe)
    done = apply_fast_path(pipe, plan_fast_path(CPU, channels_last=True, torch_compile=False))
    assert done == ["sdpa (already default)"]
    assert set(processors(pipe)) == {"AttnProcessor2_0"}
    assert not is_compiled(pipe.unet)
    assert np.array_equal(run(pipe), before)


def test_plain_attention_is_switched_to_sdpa(tiny_model: Path) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    pipe = load(tiny_model)
    reference = run(pipe)
    pipe.unet.set_attn_processor(AttnProcessor())
    done = apply_fast_path(pipe, FastPathPlan())
    assert done == [f"sdpa ({sum(processors(pipe).values())} processors switched)"]
    assert set(processors(pipe)) == {"AttnProcessor2_0"}
    assert np.abs(run(pipe) - reference).max() <= 1


def test_channels_last_and_compile_mechanics_run_on_the_cpu(tiny_model: Path) -> None:
    """The CUDA-only steps forced on the CPU (eager backend: tracing, no code generation)."""
    pipe = load(tiny_model)
    reference = run(pipe)
    plan = FastPathPlan(channels_last=True, compile=True, compile_backend="eager")
    try:
        assert apply_fast_path(pipe, plan)[1:] == ["channels_last", "torch.compile unet (eager)"]
        assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert is_compiled(pipe.unet)
        assert list(warm_up(pipe, [(64, 64)], steps=2)) == [(64, 64)]
        assert np.abs(run(pipe) - reference).max() <= 1
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize(
    ("device", "compile_shapes", "expected"),
    [
        (CPU, [], []),  # no per-size set-up on the CPU worth a slower start
        (CPU, [(512, 512)], []),
        (CUDA, [], [(768, 768)]),  # the model's default size
        (CUDA, [(512, 512), (512, 768)], [(512, 512), (512, 768)]),
    ],
)
def test_a_cuda_worker_warms_up_at_the_sizes_to_compile_else_the_default_size(
    device: DevicePlan, compile_shapes: list[tuple[int, int]], expected: list[tuple[int, int]]
) -> None:
    assert warm_up_shapes(device, compile_shapes, default_size=768) == expected


def test_warm_up_with_no_shapes_does_nothing(tiny_model: Path) -> None:
    assert warm_up(load(tiny_model), []) == {}


def test_set_vae_tiling_toggles_the_shared_vae_both_ways(tiny_model: Path) -> None:
    pipe = load(tiny_model)
    assert pipe.vae.use_tiling is False
    view = with_scheduler(pipe, make_scheduler("ddim", pipe.scheduler.config))
    set_vae_tiling(view, True)
    assert pipe.vae.use_tiling is True  # a per-call view shares the VAE: the flag must be set every call
    set_vae_tiling(pipe, True)
    assert pipe.vae.use_tiling is True
    set_vae_tiling(view, False)
    assert pipe.vae.use_tiling is False
    set_vae_tiling(object(), True)  # no VAE: nothing to do


def test_tiled_decode_runs_past_the_tile_size(tiny_model: Path) -> None:
    pipe = load(tiny_model)
    assert pipe.vae.tile_sample_min_size == 256  # tiny-sd's VAE tiles above 256 px
    latents = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(0))  # 320x320 px

    def decode(width: int, height: int, tiling_pixels: int) -> torch.Tensor:
        set_vae_tiling(pipe, use_vae_tiling(width, height, tiling_pixels))
        with torch.inference_mode():
            return pipe.vae.decode(latents).sample

    tiled, whole = decode(320, 320, 1024), decode(320, 320, 0)
    assert tiled.shape == whole.shape == (1, 3, 320, 320)
    assert not torch.equal(tiled, whole)  # the tiles really were decoded separately


def test_a_bad_compile_shape_fails_at_settings_load_naming_it() -> None:
    with pytest.raises(ValueError, match="512by512"):
        Settings(compile_shapes="512x512,512by512")


class GraphCounter:
    """A ``torch.compile`` backend that counts the graphs dynamo hands it and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        return graph.forward


def test_warm_up_compiles_two_graphs_and_no_batch_sampler_or_guidance_compiles_again(
    tiny_model: Path,
) -> None:
    """Dynamo's guards on the CPU: the warm-up makes two graphs (a UNet batch of 1, and
    every larger batch), and then batches of 1-4 images, guided or not, with integer (DDIM,
    DPM++) or float (Euler) timesteps run without a new one. Plain ``unet.compile()``
    made five here (static batch, dynamic batch, batch of 1, then each again for the
    other timestep dtype), each an inductor compile of its own on a GPU."""
    pipe = load(tiny_model)
    counter = GraphCounter()
    compile_unet(pipe.unet, counter)
    try:
        warm_up(pipe, [(64, 64)], (1, 4), steps=2)
        assert counter.graphs == 2
        with torch._dynamo.config.patch(error_on_recompile=True):
            for scheduler in ("ddim", "euler_a", "dpmpp_2m"):
                for images, guidance in ((1, 1.0), (3, 1.0), (1, 7.5), (3, 7.5), (4, 7.5)):
                    requests = [
                        generation_request(steps=2, guidance_scale=guidance, scheduler=scheduler, seed=seed)
                        for seed in range(images)
                    ]
                    assert len(generate_batch(pipe, requests)) == images
        assert counter.graphs == 2
    finally:
        torch._dynamo.reset()


def record_decodes(pipe: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Each VAE decode of ``pipe`` from now on, as (batch size, whether tiling was on)."""
    decodes: list[tuple[int, bool]] = []
    decode = pipe.vae.decode

    def recording_decode(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        decodes.append((latents.shape[0], pipe.vae.use_tiling))
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", recording_decode)
    return decodes


def test_the_worker_warms_up_every_batch_size_through_the_vae_on_the_two_graphs(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch size's first call pays a set-up of its own besides any compile (on an H100
    and an H200 0.5-1.1 s, in the UNet and the VAE), so the worker's warm-up calls every batch size it
    runs and decodes each; the sizes from 2 up still share one graph."""
    pipe = load(tiny_model)
    decodes = record_decodes(pipe, monkeypatch)
    counter = GraphCounter()
    compile_unet(pipe.unet, counter)
    try:
        sizes = warm_up_batch_sizes(Settings(max_batch_size=4).max_batch_size)
        assert sizes == [1, 2, 3, 4]
        warm_up(pipe, [(64, 64)], sizes, steps=2)
        # Then one unguided image; none tiled (no tiling threshold given).
        assert decodes == [(1, False), (2, False), (3, False), (4, False), (1, False)]
        assert counter.graphs == 2
    finally:
        torch._dynamo.reset()


def test_an_eager_warm_up_calls_every_batch_size_through_the_vae(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not compiled, a CUDA worker still warms up: the per-size set-up is not a compile."""
    pipe = load(tiny_model)
    decodes = record_decodes(pipe, monkeypatch)
    assert list(warm_up(pipe, [(64, 64)], [1, 2, 3], steps=1)) == [(64, 64)]
    assert decodes == [(1, False), (2, False), (3, False), (1, False)]
    assert not is_compiled(pipe.unet)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_the_warm_up_calls_run_on_every_family(family: str) -> None:
    """A CUDA worker warms up whatever it serves, compiled or not: the calls fit each
    family's pipeline (its text encoders, transformer or UNet, flow-matching scheduler)."""
    from easel.worker.engine.tiny_families import build_family_pipeline

    assert list(warm_up(build_family_pipeline(family), [(64, 64)], [1, 2], steps=1)) == [(64, 64)]


@pytest.mark.parametrize(("plan", "warmed"), [(CUDA, True), (CPU, False)])
def test_a_cuda_worker_warms_its_preloaded_model_up_at_its_default_size_and_every_batch_size(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, plan: DevicePlan, warmed: bool
) -> None:
    """``preload`` to ``warm_up``: the plan decides (the pipeline itself runs on the CPU)."""
    settings = env["settings"].model_copy(update={"max_batch_size": 3, "preload_models": "default"})
    cache = PipelineCache(loader=lambda spec: load_pipeline(spec, CPU))
    pipelines, _ = cache.get(env["registry"].get("tiny-sd"))
    decodes = record_decodes(pipelines.base, monkeypatch)
    preload(settings, env["registry"], ["tiny-sd"], cache, plan)
    assert cache.loads == {"tiny-sd": 1}
    assert decodes == ([(1, False), (2, False), (3, False), (1, False)] if warmed else [])


def test_a_warm_up_that_fails_leaves_the_model_loaded_and_says_so(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from easel.worker import process

    def failing_warm_up(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("CUDA error: an illegal memory access (simulated)")

    monkeypatch.setattr(process, "warm_up", failing_warm_up)
    cache = PipelineCache(loader=lambda spec: load_pipeline(spec, CPU))
    with caplog.at_level(logging.ERROR, logger="easel.worker.process"):
        preload(env["settings"], env["registry"], ["tiny-sd"], cache, CUDA)
    assert cache.loads == {"tiny-sd": 1}
    assert "could not warm up model tiny-sd; it serves jobs without the warm-up" in caplog.text
    assert "could not preload" not in caplog.text


def test_the_warm_up_decodes_in_tiles_where_a_job_of_that_size_would(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = load(tiny_model)
    decodes = record_decodes(pipe, monkeypatch)
    compile_unet(pipe.unet, GraphCounter())
    try:
        warm_up(pipe, [(64, 64), (32, 32)], [1], steps=1, vae_tiling_pixels=64 * 64)
    finally:
        torch._dynamo.reset()
        set_vae_tiling(pipe, False)
    assert decodes == [(1, True), (1, True), (1, False), (1, False)]  # per shape: guided, then unguided


def test_a_warm_up_batch_out_of_gpu_memory_skips_the_larger_ones_and_says_so(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The warm-up at a large ``EASEL_MAX_BATCH_SIZE`` may not fit where jobs would (they
    split on out-of-memory): the worker still starts, warmed up below that size."""
    from easel.worker.engine import fastpath

    pipe = load(tiny_model)
    compile_unet(pipe.unet, GraphCounter())
    ran: list[tuple[int, float]] = []

    def call(pipe: Any, width: int, height: int, size: int, guidance: float, steps: int, tiling: int) -> None:
        if size >= 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        ran.append((size, guidance))

    monkeypatch.setattr(fastpath, "_warm_up_call", call)
    try:
        with caplog.at_level(logging.WARNING, logger="easel.worker.engine.fastpath"):
            assert list(warm_up(pipe, [(64, 64)], [1, 2, 3, 4], steps=2)) == [(64, 64)]
    finally:
        torch._dynamo.reset()
    assert ran == [(1, 7.5), (2, 7.5), (1, 1.0)]  # 4 skipped after 3 failed; the unguided image still runs
    assert "warm-up at 64x64 stopped at a batch of 3 images: out of GPU memory" in caplog.text


def test_an_integer_timestep_and_its_float_give_the_unet_the_same_output(tiny_model: Path) -> None:
    """What lets ``compile_unet`` cast integer timesteps to float32 without changing an image."""
    unet = load(tiny_model).unet
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for step in (999, 501, 1):
            as_int = unet(sample, torch.tensor(step), encoder_hidden_states=text).sample
            as_float = unet(sample, torch.tensor(float(step)), encoder_hidden_states=text).sample
            assert torch.equal(as_int, as_float)


def test_sdxl_added_conditions_share_the_two_graphs() -> None:
    """SDXL's UNet also takes pooled text embeddings and size ids, batched like the sample:
    marked dynamic with it, they add no graph either."""
    from easel.worker.engine.tiny_families import build_family_pipeline

    pipe = build_family_pipeline("sdxl")
    counter = GraphCounter()
    compile_unet(pipe.unet, counter)
    try:
        warm_up(pipe, [(64, 64)], (1, 4), steps=2)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for scheduler in ("ddim", "euler_a"):
                for images, guidance in ((1, 1.0), (3, 7.5), (1, 7.5)):
                    requests = [
                        generation_request(steps=2, guidance_scale=guidance, scheduler=scheduler, seed=seed)
                        for seed in range(images)
                    ]
                    assert len(generate_batch(pipe, requests)) == images
        assert counter.graphs == 2
    finally:
        torch._dynamo.reset()
