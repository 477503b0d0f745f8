"""Where and in what precision a worker runs its pipelines.

The choice is a pure function of what the machine reports, so it is unit-tested on
a CPU-only machine; ``detect`` is the one place that asks torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DevicePlan:
    """A device string for torch and the dtype name the weights are loaded in."""

    device: str
    dtype: str  # "float16" | "bfloat16" | "float32"

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def plan_device(requested: str, cuda_available: bool, cuda_count: int) -> DevicePlan:
    """Pick the device for ``requested`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    ``auto`` takes the first visible GPU if there is one (one worker process per
    GPU: pin it with ``CUDA_VISIBLE_DEVICES``), else the CPU. CUDA runs in half
    precision; the CPU in float32, where half precision is slow or unsupported.
    """
    requested = requested.strip().lower()
    if requested == "auto":
        requested = "cuda" if cuda_available and cuda_count > 0 else "cpu"
    if requested == "cpu":
        return DevicePlan("cpu", "float32")
    if requested == "cuda" or requested.startswith("cuda:"):
        if not cuda_available or cuda_count == 0:
            raise ValueError(f"device {requested!r} asked for, but CUDA is not available")
        index = int(requested.partition(":")[2] or 0)
        if not 0 <= index < cuda_count:
            raise ValueError(f"device {requested!r} asked for, but only {cuda_count} GPU(s) are visible")
        return DevicePlan(f"cuda:{index}", "float16")
    raise ValueError(f"device {requested!r} is not one of auto, cpu, cuda, cuda:N")


def overlaps_store(setting: str, plan: DevicePlan, torch_threads: int, cpus: int) -> bool:
    """Whether a worker stores and records a batch in a thread beside the next batch's
    denoising (``EASEL_STORE_OVERLAP``: ``true``, ``false`` or ``auto``).

    ``auto``: on a GPU, yes (the GPU denoises while a CPU core stores); on the CPU, only
    when the denoising leaves a core free (``torch_threads < cpus``). With every core
    denoising, a storing thread beside it took cores from the denoising threads and
    slowed each batch by more than storing between batches costs; on an H200, storing
    between batches left the GPU idle about 190 ms a batch (docs/benchmarks.md).
    """
    if setting in ("true", "false"):
        return setting == "true"
    return plan.is_cuda or torch_threads < cpus


def detect(requested: str) -> DevicePlan:
    """``plan_device`` with what torch reports on this machine."""
    import torch

    available = torch.cuda.is_available()
    return plan_device(requested, available, torch.cuda.device_count() if available else 0)


def torch_dtype(plan: DevicePlan) -> torch.dtype:
    import torch

    dtype: torch.dtype = getattr(torch, plan.dtype)
    return dtype
