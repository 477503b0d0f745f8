"""The compile cache with the real inductor CPU backend across processes, and on S3 (moto).

Each process gets a fresh ``TORCHINDUCTOR_CACHE_DIR``, so only the cache entry carries a
compile from one start to the next (as it does to another machine through S3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from easel.shared.settings import Settings
from easel.shared.storage import S3Storage, storage_from_settings
from easel.worker.engine.compile_cache import SHARED_PREFIX, CompileCache, make_key
from easel.worker.engine.compile_switch import compiler_from_settings
from easel.worker.engine.device import DevicePlan

START = """
import json, sys
from pathlib import Path
import torch
from torch._dynamo.utils import counters
from easel.worker.engine.compile_cache import CompileCache, make_key
from easel.worker.engine.fastpath import compiled_call

root, size = Path(sys.argv[1]), int(sys.argv[2])

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.time = torch.nn.Linear(1, 4)

    def forward(self, sample, timestep, context):
        scale = self.time(timestep.reshape(1, 1)).reshape(1, 4, 1, 1)
        return torch.nn.functional.silu(self.conv(sample) * scale) + context.mean()

torch.manual_seed(0)
net = Net().eval()
key = make_key(device="cpu test", model="net", dtype="float32", shapes=[(size, size)], batch_sizes=[2],
               settings={"channels_last": "False"})
cache = CompileCache(root)
outcome = cache.load(key)
call = compiled_call(net, "inductor")
with torch.inference_mode():
    out = call(torch.ones(2, 4, size // 8, size // 8), torch.tensor(3), torch.ones(2, 7, 8))
saved = cache.save(key) if outcome != "hit" else False
print(json.dumps({
    "outcome": outcome,
    "saved": saved,
    "inductor_compiles": counters["inductor"]["fxgraph_cache_miss"],
    "inductor_hits": counters["inductor"]["fxgraph_cache_hit"],
    "aot_misses": counters["aot_autograd"]["autograd_cache_miss"],
    "sum": round(float(out.sum()), 4),
}))
"""


def start(root: Path, size: int, inductor_dir: Path) -> dict[str, Any]:
    """One worker start in a new process: load the entry, compile, call, save on a miss."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    done = subprocess.run(
        [sys.executable, "-c", START, str(root), str(size)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_second_start_compiles_nothing_and_a_changed_shape_or_corrupt_entry_compiles_again(
    tmp_path: Path,
) -> None:
    root = tmp_path / "compile-cache"
    first = start(root, 64, tmp_path / "inductor-1")
    assert first["outcome"] == "miss" and first["saved"] and first["inductor_compiles"] >= 1

    second = start(root, 64, tmp_path / "inductor-2")  # a new process, inductor's own cache empty
    assert second["outcome"] == "hit"
    assert second["inductor_compiles"] == 0 and second["aot_misses"] == 0 and second["inductor_hits"] >= 1
    assert second["sum"] == first["sum"]

    other = start(root, 128, tmp_path / "inductor-3")  # another shape: another key
    assert other["outcome"] == "miss" and other["inductor_compiles"] >= 1

    key = make_key(
        device="cpu test",
        model="net",
        dtype="float32",
        shapes=[(64, 64)],
        batch_sizes=[2],
        settings={"channels_last": "False"},
    )
    entry = CompileCache(root).path(key)  # as the processes made it
    assert len(list(root.glob("*.bin"))) == 2 and entry.exists()
    data = bytearray(entry.read_bytes())
    data[-10] ^= 0xFF  # one byte of torch's payload
    entry.write_bytes(bytes(data))
    damaged = start(root, 64, tmp_path / "inductor-4")
    assert damaged["outcome"] == "corrupt" and damaged["inductor_compiles"] >= 1  # ignored; the start went on
    assert damaged["sum"] == first["sum"] and damaged["saved"]  # and a good entry replaced it
    assert start(root, 64, tmp_path / "inductor-5")["outcome"] == "hit"


# --- S3 ---------------------------------------------------------------------------------------


@pytest.fixture
def s3_settings(s3: dict[str, str], tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        storage_url=f"s3://{s3['bucket']}/compile-test",
        s3_endpoint_url=s3["endpoint"],
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        torch_compile="true",
    )


def test_the_first_worker_shares_its_entry_through_s3_and_another_downloads_it(
    s3_settings: Settings, s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"graphs", None))
    loaded: list[bytes] = []
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: loaded.append(data) or "info")
    storage = storage_from_settings(s3_settings)
    assert isinstance(storage, S3Storage)
    compiler = compiler_from_settings(s3_settings, DevicePlan("cpu", "float32"), storage)
    assert compiler is not None and compiler.cache is not None and compiler.cache.shared is storage
    key = make_key(
        device="cpu test", model="m", dtype="float32", shapes=[(64, 64)], batch_sizes=[1], settings={}
    )
    assert compiler.cache.save(key)
    listed = storage.client.list_objects_v2(Bucket=s3["bucket"], Prefix="compile-test/" + SHARED_PREFIX)
    assert [o["Key"] for o in listed["Contents"]] == [f"compile-test/{SHARED_PREFIX}{key.digest()}.bin"]

    other_machine = CompileCache(tmp_path / "elsewhere", storage)
    assert other_machine.load(key) == "hit" and loaded == [b"graphs"]
    assert (
        CompileCache(tmp_path / "elsewhere", storage).load(make_key(**{**_fields(), "shapes": [(8, 8)]}))
        == "miss"
    )

    unshared = compiler_from_settings(
        s3_settings.model_copy(update={"compile_cache_shared": False}), DevicePlan("cpu", "float32"), storage
    )
    assert unshared is not None and unshared.cache is not None and unshared.cache.shared is None


def _fields() -> dict[str, Any]:
    return {"device": "cpu test", "model": "m", "dtype": "float32", "batch_sizes": [1], "settings": {}}
