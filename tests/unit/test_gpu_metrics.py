"""A worker's GPU series (worker/gpu_metrics.py) as choices, with fakes for
``torch.cuda`` and NVML (no GPU here), and their absence on the CPU for real; plus the
worker's failure-by-code, database-readiness and webhook series."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from easel.worker import gpu_metrics as gm
from easel.worker import metrics as wm
from tests.factories import parse_metrics, value

GIB = 1024**3


@dataclass
class Props:
    name: str
    total_memory: int


@dataclass
class FakeCuda:
    """``torch.cuda`` of a process that sees ``devices`` (name, total, allocated, reserved)."""

    devices: list[tuple[str, int, int, int]]
    available: bool = True
    broken: set[int] = field(default_factory=set)

    def is_available(self) -> bool:
        return self.available

    def device_count(self) -> int:
        return len(self.devices)

    def memory_allocated(self, device: int) -> int:
        if device in self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.devices[device][2]

    def memory_reserved(self, device: int) -> int:
        return self.devices[device][3]

    def get_device_properties(self, device: int) -> Props:
        return Props(self.devices[device][0], self.devices[device][1])


class NVMLError(Exception):
    pass


@dataclass
class Rates:
    gpu: int
    memory: int


@dataclass
class MemoryInfo:
    total: int
    used: int
    free: int


@dataclass
class FakeNvml:
    """pynvml over physical GPUs: ``utilisation`` and ``used`` by physical index / UUID."""

    utilisation: dict[int | str, int]
    used: dict[int | str, int]
    asked: list[int | str] = field(default_factory=list)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int | str:
        self.asked.append(index)
        if index not in self.utilisation:
            raise NVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int | str:
        self.asked.append(uuid)
        if uuid not in self.utilisation:
            raise NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetUtilizationRates(self, handle: int | str) -> Rates:
        return Rates(gpu=self.utilisation[handle], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int | str) -> MemoryInfo:
        return MemoryInfo(total=80 * GIB, used=self.used[handle], free=0)


def scrape(collector: Any) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return text, parse_metrics(text)


H100 = ("NVIDIA H100 80GB HBM3", 80 * GIB, 3 * GIB, 5 * GIB)


def test_memory_from_torch_and_utilisation_from_nvml_per_device() -> None:
    cuda = FakeCuda([H100, ("NVIDIA L4", 24 * GIB, GIB, 2 * GIB)])
    nvml = FakeNvml(utilisation={0: 87, 1: 3}, used={0: 6 * GIB, 1: 2 * GIB})
    _, s = scrape(gm.GpuCollector(cuda, nvml, visible=None))
    h100 = {"device": "0", "gpu": "NVIDIA H100 80GB HBM3"}
    l4 = {"device": "1", "gpu": "NVIDIA L4"}
    assert value(s, gm.ALLOCATED, **h100) == 3 * GIB
    assert value(s, gm.RESERVED, **h100) == 5 * GIB
    assert value(s, gm.TOTAL, **h100) == 80 * GIB
    assert value(s, gm.USED, **h100) == 6 * GIB
    assert value(s, gm.UTILIZATION, **h100) == pytest.approx(0.87)
    assert value(s, gm.UTILIZATION, **l4) == pytest.approx(0.03)
    assert value(s, gm.TOTAL, **l4) == 24 * GIB


def test_nvml_reads_the_physical_gpu_that_cuda_visible_devices_names() -> None:
    """The compose worker runs with CUDA_VISIBLE_DEVICES=<its GPU>: its cuda:0 is NVML's 2."""
    nvml = FakeNvml(utilisation={0: 1, 2: 55}, used={0: 0, 2: GIB})
    _, s = scrape(gm.GpuCollector(FakeCuda([H100]), nvml, visible="2"))
    assert nvml.asked == [2]
    assert value(s, gm.UTILIZATION, device="0", gpu=H100[0]) == pytest.approx(0.55)

    uuid = "GPU-5c8a1f2e-0000-1111-2222-333344445555"
    nvml = FakeNvml(utilisation={uuid: 40}, used={uuid: GIB})
    _, s = scrape(gm.GpuCollector(FakeCuda([H100]), nvml, visible=uuid))
    assert nvml.asked == [uuid] and value(s, gm.UTILIZATION, device="0", gpu=H100[0]) == 0.4


@pytest.mark.parametrize(
    ("count", "visible", "keys"),
    [
        (2, None, [0, 1]),
        (2, "", [0, 1]),
        (1, "3", [3]),
        (2, "3, 1", [3, 1]),
        (1, "GPU-abc", ["GPU-abc"]),
        (2, "1,MIG-xyz", [1]),  # MIG instances are not mapped: NVML series only for GPU 1
        (1, "2,3", [2]),  # CUDA enumerates what the process can use
    ],
)
def test_nvml_keys(count: int, visible: str | None, keys: list[int | str]) -> None:
    assert gm.nvml_indexes(count, visible) == keys


def test_without_nvml_only_torch_series_and_no_utilisation() -> None:
    text, s = scrape(gm.GpuCollector(FakeCuda([H100]), None))
    assert value(s, gm.ALLOCATED, device="0", gpu=H100[0]) == 3 * GIB
    assert gm.UTILIZATION not in text and gm.USED not in text  # absent, not zero


def test_a_device_nvml_cannot_read_keeps_its_torch_series() -> None:
    nvml = FakeNvml(utilisation={0: 10}, used={0: GIB})
    _, s = scrape(gm.GpuCollector(FakeCuda([H100, H100]), nvml))
    assert value(s, gm.UTILIZATION, device="0", gpu=H100[0]) == 0.1
    assert value(s, gm.UTILIZATION, device="1", gpu=H100[0]) is None
    assert value(s, gm.TOTAL, device="1", gpu=H100[0]) == 80 * GIB


def test_a_device_torch_cannot_read_is_left_out_and_the_scrape_stands() -> None:
    cuda = FakeCuda([H100, H100], broken={0})
    _, s = scrape(gm.GpuCollector(cuda, FakeNvml(utilisation={0: 1, 1: 2}, used={0: 0, 1: 0})))
    assert value(s, gm.ALLOCATED, device="0", gpu=H100[0]) is None
    assert value(s, gm.UTILIZATION, device="0", gpu=H100[0]) is None
    assert value(s, gm.UTILIZATION, device="1", gpu=H100[0]) == 0.02


def test_cuda_unavailable_means_absent_series_not_zeros() -> None:
    text, s = scrape(gm.GpuCollector(FakeCuda([H100], available=False), FakeNvml({0: 1}, {0: 0})))
    assert s == {} and "easel_worker_gpu" not in text


def test_the_device_plan_chooses_the_collector() -> None:
    loads: list[str] = []

    def loader() -> FakeNvml:
        loads.append("nvml")
        return FakeNvml({0: 1}, {0: 0})

    for device in ("cpu", "mps"):
        assert gm.gpu_collector(device, cuda=FakeCuda([H100]), nvml_loader=loader) is None
    assert loads == []  # NVML is not even imported off CUDA
    collector = gm.gpu_collector("cuda:0", cuda=FakeCuda([H100]), nvml_loader=loader, visible="1")
    assert collector is not None and loads == ["nvml"] and collector.visible == "1"


def test_on_this_cpu_machine_the_real_torch_and_nvml_give_no_series() -> None:
    """The real ``torch.cuda`` (no GPU here) and the real ``pynvml`` (installed, no
    driver: ``load_nvml`` answers ``None`` instead of raising)."""
    assert gm.load_nvml() is None
    collector = gm.gpu_collector("cuda")
    assert collector is not None
    text, s = scrape(collector)
    assert s == {} and "easel_worker_gpu" not in text


def test_a_cpu_worker_exports_no_gpu_series() -> None:
    assert wm.watch_gpus("cpu") is False
    text = generate_latest(wm.REGISTRY).decode()
    assert "easel_worker_gpu" not in text


def test_load_nvml_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # as if nvidia-ml-py were not installed
    assert gm.load_nvml() is None


# -- the other series the dashboard and the alerts read ------------------------------------


def test_failed_jobs_are_counted_by_code() -> None:
    def failed(code: str) -> float:
        return (
            wm.REGISTRY.get_sample_value("easel_worker_jobs_failed_total", {"model": "m", "code": code}) or 0
        )

    before = failed("out_of_memory"), failed("unknown")
    wm.observe_job_finished("m", "txt2img", "failed", {}, "out_of_memory")
    wm.observe_job_finished("m", "txt2img", "failed", {})
    wm.observe_job_finished("m", "txt2img", "succeeded", {}, None)
    assert (failed("out_of_memory"), failed("unknown")) == (before[0] + 1, before[1] + 1)


def test_webhook_outcomes_start_at_zero_and_count() -> None:
    wm.init_webhook_series()

    def n(outcome: str) -> float | None:
        return wm.REGISTRY.get_sample_value(
            "easel_webhook_deliveries_total", {"event": "completed", "outcome": outcome}
        )

    before = n("failed")
    assert before is not None and n("abandoned") is not None
    wm.observe_webhook("completed", "failed")
    assert n("failed") == before + 1


def test_database_ready_follows_the_heartbeat() -> None:
    wm.set_database_ready(False)
    assert wm.REGISTRY.get_sample_value("easel_worker_database_ready") == 0
    wm.set_database_ready(True)
    assert wm.REGISTRY.get_sample_value("easel_worker_database_ready") == 1
