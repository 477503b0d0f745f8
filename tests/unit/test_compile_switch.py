"""The background compile on the tiny pipeline: jobs run eagerly while the UNet compiles,
then on the compiled graphs; a cache hit compiles before the first job. A counting
backend stands in for inductor (the real compile is in tests/integration/test_compile_cache.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from easel.shared.registry import ModelSource, ModelSpec
from easel.shared.settings import Settings
from easel.worker.engine.compile_cache import CompileCache
from easel.worker.engine.compile_switch import Compiler, CompileState, compiler_from_settings
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.pipelines import load_pipeline
from tests.factories import generate_one, generation_request

CPU = DevicePlan("cpu", "float32")
CUDA = DevicePlan("cuda:0", "float16")


class GatedBackend:
    """A ``torch.compile`` backend that waits at ``gate`` before each graph, counts the
    graphs and their calls, and runs them eagerly."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.graphs = 0
        self.calls = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        self.entered.set()
        assert self.gate.wait(300)

        def run(*args: Any) -> Any:
            self.calls += 1
            return graph.forward(*args)

        return run


def spec_of(folder: Path) -> ModelSpec:
    return ModelSpec(name="t", source=ModelSource.DIRECTORY, location=str(folder), default_size=64)


def run(pipe: Any) -> np.ndarray:
    req = generation_request(steps=2, guidance_scale=7.5, scheduler="euler", seeds=(5,), width=64, height=64)
    [image] = generate_one(pipe, req)
    return np.asarray(image, dtype=np.int16)


def compiler(cache: CompileCache | None, backend: Any, states: list[CompileState]) -> Compiler:
    return Compiler(
        plan=CPU,
        cache=cache,
        shapes=[(64, 64)],
        batch_sizes=[1, 2],
        settings={"channels_last": "False"},
        backend=backend,
        on_state=states.append,
    )


def test_a_cache_miss_serves_jobs_eagerly_while_compiling_then_switches(
    tiny_model: Path, tmp_path: Path
) -> None:
    pipe = load_pipeline(spec_of(tiny_model), CPU, channels_last=False)
    reference = run(pipe)
    backend = GatedBackend()
    states: list[CompileState] = []
    worker = compiler(CompileCache(tmp_path), backend, states)
    try:
        assert worker.attach(spec_of(tiny_model), pipe) is pipe  # returns at once
        assert backend.entered.wait(120)  # the compile thread is inside its first graph
        assert worker.states["t"].path == "compiling"
        assert np.array_equal(run(pipe), reference)  # a job, served eagerly meanwhile
        assert (backend.graphs, backend.calls) == (1, 0)
        backend.gate.set()
        state = worker.wait("t", 300)
        assert state is not None and state.path == "compiled" and state.cache == "miss"
        assert state.warm_up_seconds is not None and state.warm_up_seconds > 0
        calls = backend.calls
        compiled = run(pipe)
        assert backend.calls > calls  # the job ran the compiled graphs
        assert np.abs(compiled - reference).max() <= 1
        assert [(s.path, s.cache) for s in states] == [("compiling", "miss"), ("compiled", "miss")]
    finally:
        backend.gate.set()
        torch._dynamo.reset()


def test_a_cache_hit_compiles_before_the_first_job_and_saves_nothing(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[bool] = []
    monkeypatch.setattr(
        torch.compiler, "save_cache_artifacts", lambda: saved.append(True) or (b"graphs", None)
    )
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: "info")
    cache = CompileCache(tmp_path)
    try:
        first = compiler(cache, GatedBackend(), [])
        first.background = False  # the first start compiles in line here, then saves
        first.backend.gate.set()
        first.attach(spec_of(tiny_model), load_pipeline(spec_of(tiny_model), CPU, channels_last=False))
        assert first.states["t"] == CompileState("t", "compiled", "miss", first.states["t"].warm_up_seconds)
        assert saved == [True]
        torch._dynamo.reset()
        backend = GatedBackend()
        backend.gate.set()
        second = compiler(cache, backend, [])
        pipe = load_pipeline(spec_of(tiny_model), CPU, channels_last=False)
        second.attach(spec_of(tiny_model), pipe)
        assert second.states["t"].path == "compiled" and second.states["t"].cache == "hit"  # before any job
        calls = backend.calls
        run(pipe)
        assert backend.calls > calls
        assert saved == [True]  # a hit is not saved again
    finally:
        torch._dynamo.reset()


def test_a_failed_compile_keeps_the_model_serving_eagerly(tiny_model: Path) -> None:
    def broken(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        raise RuntimeError("no compiler here (simulated)")

    pipe = load_pipeline(spec_of(tiny_model), CPU, channels_last=False)
    reference = run(pipe)
    worker = compiler(None, broken, [])
    try:
        worker.attach(spec_of(tiny_model), pipe)
        state = worker.wait("t", 300)
        assert state is not None and state.path == "failed"
        assert np.array_equal(run(pipe), reference)
    finally:
        torch._dynamo.reset()


def test_the_worker_compiles_by_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # kept: set already
    assert compiler_from_settings(Settings(home=tmp_path), CPU) is None  # auto: eager on the CPU
    assert compiler_from_settings(Settings(home=tmp_path, torch_compile="false"), CUDA) is None
    on_cpu = compiler_from_settings(Settings(home=tmp_path, torch_compile="true", max_batch_size=3), CPU)
    assert on_cpu is not None and on_cpu.batch_sizes == [1, 2, 3] and on_cpu.background
    assert on_cpu.cache is not None and on_cpu.cache.root == tmp_path.resolve() / "compile-cache"
    assert on_cpu.cache.shared is None  # local job storage: nothing to share through
    on_cuda = compiler_from_settings(
        Settings(home=tmp_path, compile_background=False, compile_cache="off"), CUDA
    )
    assert on_cuda is not None and on_cuda.cache is None and not on_cuda.background
    assert on_cuda.settings["channels_last"] == "True"


def test_preload_leaves_the_warm_up_to_the_compile_and_metrics_say_the_path(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from easel.worker import process
    from easel.worker.compile_metrics import observe_compile
    from easel.worker.engine.pipelines import PipelineCache
    from easel.worker.metrics import REGISTRY

    def no_second_warm_up(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the compile already warmed the model up")

    monkeypatch.setattr(process, "warm_up", no_second_warm_up)
    backend = GatedBackend()
    backend.gate.set()
    worker = compiler(None, backend, [])
    worker.background = False
    worker.on_state = observe_compile
    cache = PipelineCache(
        loader=lambda spec: worker.attach(spec, load_pipeline(spec, CPU, channels_last=False))
    )
    try:
        process.preload(env["settings"], env["registry"], ["tiny-sd"], cache, CUDA, worker)
        assert cache.loads == {"tiny-sd": 1} and worker.states["tiny-sd"].path == "compiled"
        sample = REGISTRY.get_sample_value
        assert sample("easel_worker_compile_path", {"model": "tiny-sd", "path": "compiled"}) == 1.0
        assert sample("easel_worker_compile_path", {"model": "tiny-sd", "path": "compiling"}) == 0.0
        assert sample("easel_worker_compile_cache_total", {"model": "tiny-sd", "result": "miss"}) == 1.0
        seconds = sample("easel_worker_compile_warm_up_seconds", {"model": "tiny-sd"})
        assert seconds is not None and seconds > 0
    finally:
        torch._dynamo.reset()


def test_a_worker_with_compile_on_serves_its_first_load_eagerly_and_compiles_beside_it(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``WorkerProcess.build`` wires the compiler into the pipeline cache's loader."""
    import time

    from easel.worker.engine import compile_switch
    from easel.worker.metrics import REGISTRY
    from easel.worker.process import WorkerProcess

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    backend = GatedBackend()
    real = compile_switch.compiled_call
    monkeypatch.setattr(compile_switch, "compiled_call", lambda unet, _backend: real(unet, backend))
    settings = env["settings"].model_copy(
        update={"preload_models": "none", "metrics_port": 0, "torch_compile": "true", "max_batch_size": 2}
    )
    process = WorkerProcess.build(
        settings, env["registry"], ["tiny-sd"], CPU, lambda *_: None, lambda *_: None
    )
    try:
        pipelines, _ = process.runner.cache.get(env["registry"].get("tiny-sd"))  # returns before the compile
        assert backend.entered.wait(120) and backend.calls == 0
        path = {"model": "tiny-sd", "path": "compiling"}
        assert REGISTRY.get_sample_value("easel_worker_compile_path", path) == 1.0
        run(pipelines.base)  # served eagerly
        assert backend.calls == 0
        backend.gate.set()
        for _ in range(600):  # the switch, within a minute
            if REGISTRY.get_sample_value("easel_worker_compile_path", {**path, "path": "compiled"}) == 1.0:
                break
            time.sleep(0.1)
        calls = backend.calls
        run(pipelines.base)
        assert backend.calls > calls
    finally:
        backend.gate.set()
        torch._dynamo.reset()
