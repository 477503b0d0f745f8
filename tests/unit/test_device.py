"""Device and precision choice, tested without a GPU."""

from __future__ import annotations

import pytest

from easel.worker.engine.device import DevicePlan, overlaps_store, plan_device


@pytest.mark.parametrize(
    ("requested", "available", "count", "plan"),
    [
        ("auto", False, 0, DevicePlan("cpu", "float32")),
        ("auto", True, 2, DevicePlan("cuda:0", "float16")),
        ("cpu", True, 1, DevicePlan("cpu", "float32")),
        ("cuda", True, 1, DevicePlan("cuda:0", "float16")),
        ("CUDA:1", True, 2, DevicePlan("cuda:1", "float16")),
    ],
)
def test_plan(requested: str, available: bool, count: int, plan: DevicePlan) -> None:
    assert plan_device(requested, available, count) == plan


@pytest.mark.parametrize(
    ("requested", "available", "count", "message"),
    [
        ("cuda", False, 0, "CUDA is not available"),
        ("cuda:2", True, 2, "only 2 GPU"),
        ("tpu", False, 0, "not one of auto"),
    ],
)
def test_impossible_requests_are_explained(requested: str, available: bool, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_device(requested, available, count)


def test_cuda_plan_flag() -> None:
    assert DevicePlan("cuda:0", "float16").is_cuda and not DevicePlan("cpu", "float32").is_cuda


@pytest.mark.parametrize(
    ("setting", "device", "threads", "cpus", "overlap"),
    [
        ("auto", "cuda:0", 16, 16, True),  # the GPU denoises while a core stores
        ("auto", "cpu", 2, 2, False),  # every core denoises: store between batches
        ("auto", "cpu", 1, 2, True),  # a core to spare
        ("true", "cpu", 2, 2, True),
        ("false", "cuda:0", 16, 16, False),
    ],
)
def test_a_batch_is_stored_beside_the_next_only_with_a_core_to_spare(
    setting: str, device: str, threads: int, cpus: int, overlap: bool
) -> None:
    plan = DevicePlan(device, "float32" if device == "cpu" else "float16")
    assert overlaps_store(setting, plan, threads, cpus) is overlap
