"""Device and precision choice, tested without a GPU."""

from __future__ import annotations

import pytest

from easel.worker.engine.device import DevicePlan, plan_device


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
