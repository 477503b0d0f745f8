"""GPU memory and utilisation of a worker's devices, read at scrape time.

Two sources, each optional:

* ``torch.cuda`` (what this process holds): memory allocated to tensors, memory reserved
  by the caching allocator, and each device's total memory;
* NVML through ``nvidia-ml-py`` (the ``pynvml`` module, the ``worker`` extra): the
  device's utilisation and the memory used on it by every process. Imported lazily,
  the first time a CUDA worker is watched; absent or failing to initialise (no driver),
  the worker goes on without these series.

On the CPU nothing is collected: the series are absent, not zero, so a dashboard
shows no GPU rather than an idle one. Each device is labelled with the index this
process gives it (``device="0"`` for ``cuda:0``) and its product name (``gpu``); NVML's own indexes are
physical, so ``CUDA_VISIBLE_DEVICES`` is read to map one onto the other.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

ALLOCATED = "easel_worker_gpu_memory_allocated_bytes"
RESERVED = "easel_worker_gpu_memory_reserved_bytes"
TOTAL = "easel_worker_gpu_memory_total_bytes"
USED = "easel_worker_gpu_memory_used_bytes"
UTILIZATION = "easel_worker_gpu_utilization_ratio"
NAMES = (ALLOCATED, RESERVED, TOTAL, USED, UTILIZATION)


class Cuda(Protocol):
    """The part of ``torch.cuda`` read here."""

    def is_available(self) -> bool: ...
    def device_count(self) -> int: ...
    def memory_allocated(self, device: int) -> int: ...
    def memory_reserved(self, device: int) -> int: ...
    def get_device_properties(self, device: int) -> Any: ...


def nvml_indexes(count: int, visible: str | None) -> list[int | str]:
    """The NVML handle key of each of this process's ``count`` CUDA devices: the physical
    index (an ``int``) or a UUID (``GPU-...``), from ``CUDA_VISIBLE_DEVICES`` when set.
    Entries that cannot be mapped (MIG instances, malformed) are dropped from the end."""
    if visible is None or not visible.strip():
        return list(range(count))
    keys: list[int | str] = []
    for entry in visible.split(","):
        entry = entry.strip()
        if entry.isdigit():
            keys.append(int(entry))
        elif entry.startswith("GPU-"):
            keys.append(entry)
        else:  # MIG-..., or a malformed entry: CUDA stops enumerating here too
            break
    return keys[:count]


def load_nvml() -> Any | None:
    """The initialised ``pynvml`` module, or ``None`` (not installed, or no driver)."""
    try:
        pynvml = importlib.import_module("pynvml")  # nvidia-ml-py, the worker extra
    except ImportError:
        log.info("nvidia-ml-py is not installed: no GPU utilisation metrics")
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml.NVMLError and its subclasses, a missing libnvidia-ml
        log.warning("NVML unavailable (%s): no GPU utilisation metrics", exc)
        return None
    return pynvml


class GpuCollector(Collector):
    """Collects the GPU series of this process's CUDA devices on each scrape."""

    def __init__(self, cuda: Cuda, nvml: Any | None, visible: str | None = None) -> None:
        self.cuda = cuda
        self.nvml = nvml
        self.visible = visible

    def describe(self) -> list[Metric]:
        return []  # registering must not touch the devices

    def collect(self) -> Iterator[Metric]:
        labels = ["device", "gpu"]
        families = {
            ALLOCATED: GaugeMetricFamily(
                ALLOCATED, "GPU memory this worker's tensors occupy (torch.cuda).", labels=labels
            ),
            RESERVED: GaugeMetricFamily(
                RESERVED, "GPU memory this worker's caching allocator holds (torch.cuda).", labels=labels
            ),
            TOTAL: GaugeMetricFamily(TOTAL, "GPU memory of the device.", labels=labels),
            USED: GaugeMetricFamily(
                USED, "GPU memory used on the device by every process (NVML).", labels=labels
            ),
            UTILIZATION: GaugeMetricFamily(
                UTILIZATION, "Fraction of the last sample period a kernel ran (NVML).", labels=labels
            ),
        }
        try:
            count = self.cuda.device_count() if self.cuda.is_available() else 0
        except Exception:
            log.warning("could not read the CUDA devices", exc_info=True)
            count = 0
        keys = nvml_indexes(count, self.visible)
        for index in range(count):
            try:
                props = self.cuda.get_device_properties(index)
                device = [str(index), str(props.name)]
                families[ALLOCATED].add_metric(device, float(self.cuda.memory_allocated(index)))
                families[RESERVED].add_metric(device, float(self.cuda.memory_reserved(index)))
                families[TOTAL].add_metric(device, float(props.total_memory))
            except Exception:
                log.warning("could not read the memory of cuda:%d", index, exc_info=True)
                continue
            if self.nvml is not None and index < len(keys):
                self._nvml(keys[index], device, families)
        for family in families.values():
            if family.samples:  # absent, not zero, where nothing was read
                yield family

    def _nvml(self, key: int | str, device: list[str], families: dict[str, GaugeMetricFamily]) -> None:
        nvml: Any = self.nvml
        try:
            if isinstance(key, int):
                handle = nvml.nvmlDeviceGetHandleByIndex(key)
            else:
                handle = nvml.nvmlDeviceGetHandleByUUID(key)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:  # an NVMLError for this device: its other series stand
            log.debug("NVML could not read device %s: %s", key, exc)
            return
        families[UTILIZATION].add_metric(device, float(rates.gpu) / 100.0)
        families[USED].add_metric(device, float(memory.used))


def gpu_collector(
    device: str,
    cuda: Cuda | None = None,
    nvml_loader: Callable[[], Any | None] = load_nvml,
    visible: str | None = None,
) -> GpuCollector | None:
    """The collector for a worker on ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``):
    ``None`` off CUDA, so the GPU series are absent. ``cuda`` defaults to ``torch.cuda``
    (imported here, never at module import), ``visible`` to ``CUDA_VISIBLE_DEVICES``."""
    if not device.startswith("cuda"):
        return None
    if cuda is None:
        import torch

        cuda = torch.cuda
    return GpuCollector(
        cuda, nvml_loader(), visible if visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    )
