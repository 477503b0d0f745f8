"""The compile cache's key and entries, and the compile setting's choices (no compile here)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from easel.shared.settings import Settings
from easel.worker.engine.compile_cache import (
    CompileCache,
    CompileKey,
    check_entry,
    entry,
    make_key,
    model_identity,
)
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.fastpath import compile_enabled, warm_up_shapes

CPU = DevicePlan("cpu", "float32")
CUDA = DevicePlan("cuda:0", "float16")


def key(**changes: Any) -> CompileKey:
    fields: dict[str, Any] = {
        "device": "cpu x86_64 AVX2",
        "model": "m1",
        "dtype": "float32",
        "shapes": [(64, 64)],
        "batch_sizes": [1, 2],
        "settings": {"channels_last": "False", "backend": "inductor"},
    }
    return make_key(**{**fields, **changes})


# --- the key ----------------------------------------------------------------------------------


def test_the_same_compile_has_the_same_key_whatever_the_order_given() -> None:
    assert key().digest() == key(shapes=[(64, 64), (64, 64)], batch_sizes=[2, 1]).digest()


@pytest.mark.parametrize(
    "change",
    [
        {"shapes": [(64, 64), (128, 64)]},
        {"batch_sizes": [1, 2, 3]},
        {"settings": {"channels_last": "True", "backend": "inductor"}},
        {"device": "cuda NVIDIA H100 80GB HBM3 sm90"},
        {"model": "m2"},
        {"dtype": "float16"},
    ],
)
def test_a_changed_shape_batch_setting_device_model_or_dtype_misses(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    cache = CompileCache(tmp_path)
    cache.path(key()).write_bytes(entry(key(), b"payload"))
    assert key(**change).digest() != key().digest()
    assert cache.load(key(**change)) == "miss"


def test_the_key_holds_torch_and_python_versions() -> None:
    assert key().torch == torch.__version__
    assert key().python.count(".") == 1


def test_model_identity_follows_the_architecture_not_the_weight_values() -> None:
    small, other = torch.nn.Conv2d(4, 4, 3), torch.nn.Conv2d(4, 4, 3)
    wider = torch.nn.Conv2d(4, 8, 3)
    assert model_identity("m", "/x", small) == model_identity("m", "/x", other)
    assert model_identity("m", "/x", small) != model_identity("m", "/x", wider)
    assert model_identity("m", "/x", small) != model_identity("m", "/y", small)


# --- entries ----------------------------------------------------------------------------------


def test_a_whole_entry_for_its_key_checks() -> None:
    assert check_entry(entry(key(), b"torch bytes"), key()) == "hit"


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-3],  # cut short
        lambda data: data[:-1] + b"X",  # a byte changed
        lambda data: b"not an entry at all",
        lambda data: b"",
        lambda data: b"{}\n" + data,
    ],
)
def test_a_corrupt_entry_is_ignored_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any
) -> None:
    cache = CompileCache(tmp_path)
    cache.path(key()).write_bytes(damage(entry(key(), b"torch bytes" * 10)))
    with caplog.at_level(logging.WARNING, logger="easel.worker.engine.compile_cache"):
        assert cache.load(key()) == "corrupt"
    assert "ignored" in caplog.text


def test_an_entry_torch_cannot_read_is_corrupt_and_the_start_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole entry (header and checksum right) whose payload is not torch's format."""
    cache = CompileCache(tmp_path)
    cache.path(key()).write_bytes(entry(key(), b"not torch's artifacts"))
    with caplog.at_level(logging.WARNING, logger="easel.worker.engine.compile_cache"):
        assert cache.load(key()) == "corrupt"
    assert "compiling afresh" in caplog.text


def test_an_entry_made_for_another_key_is_a_mismatch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry under the right name but made for another compile (copied by hand, say)."""
    cache = CompileCache(tmp_path)
    cache.path(key()).write_bytes(entry(key(shapes=[(128, 128)]), b"torch bytes"))
    with caplog.at_level(logging.WARNING, logger="easel.worker.engine.compile_cache"):
        assert cache.load(key()) == "mismatch"
    assert "another ['shapes']" in caplog.text


def test_no_entry_is_a_miss(tmp_path: Path) -> None:
    assert CompileCache(tmp_path / "absent").load(key()) == "miss"


class FakeShared:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, name: str, data: bytes, content_type: str) -> None:
        self.objects[name] = data

    def get(self, name: str) -> bytes:
        return self.objects[name]


def test_save_writes_the_folder_and_the_shared_store_and_another_machine_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[bytes] = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"artifacts", None))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: loaded.append(data) or "info")
    shared = FakeShared()
    assert CompileCache(tmp_path / "first", shared).save(key())
    assert list(shared.objects) == [f"compile-cache/{key().digest()}.bin"]
    assert CompileCache(tmp_path / "first").load(key()) == "hit"
    assert CompileCache(tmp_path / "second", shared).load(key()) == "hit"  # downloaded
    assert CompileCache(tmp_path / "third", FakeShared()).load(key()) == "miss"
    assert loaded == [b"artifacts", b"artifacts"]


# --- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "device", "compiles"),
    [
        ("auto", CUDA, True),
        ("auto", CPU, False),
        ("true", CPU, True),
        ("true", CUDA, True),
        ("false", CUDA, False),
        ("false", CPU, False),
    ],
)
def test_compile_is_on_by_default_on_cuda_only_and_true_or_false_decide(
    setting: str, device: DevicePlan, compiles: bool
) -> None:
    assert compile_enabled(setting, device) is compiles


@pytest.mark.parametrize(
    ("value", "read"), [(True, "true"), (False, "false"), ("1", "true"), ("OFF", "false"), ("auto", "auto")]
)
def test_the_compile_setting_reads_booleans_and_auto(tmp_path: Path, value: Any, read: str) -> None:
    assert Settings(home=tmp_path, torch_compile=value).torch_compile == read


def test_the_compile_setting_refuses_other_words(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="torch_compile"):
        Settings(home=tmp_path, torch_compile="maybe")


def test_the_compile_cache_folder_defaults_under_home_and_can_be_off(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).torch_compile == "auto"
    assert Settings(home=tmp_path).compile_cache_dir == tmp_path.resolve() / "compile-cache"
    assert Settings(home=tmp_path, compile_cache=str(tmp_path / "c")).compile_cache_dir == tmp_path / "c"
    assert Settings(home=tmp_path, compile_cache="off").compile_cache_dir is None


def test_a_compiling_cpu_worker_warms_up_but_an_eager_one_does_not() -> None:
    assert warm_up_shapes(CPU, [], 64) == []
    assert warm_up_shapes(CPU, [], 64, compiling=True) == [(64, 64)]
    assert warm_up_shapes(CPU, [(128, 64)], 64, compiling=True) == [(128, 64)]


def test_inductor_caches_move_under_the_compile_cache_unless_placed_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing ``torch._dynamo`` sets ``TORCHINDUCTOR_CACHE_DIR`` to torch's default
    (under /tmp, lost with the machine): that one is moved, a folder someone chose is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from easel.worker.engine.compile_cache import use_inductor_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert use_inductor_dir(tmp_path) == tmp_path / "inductor"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert use_inductor_dir(tmp_path / "b") == tmp_path / "b" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "chosen"))
    assert use_inductor_dir(tmp_path) == tmp_path / "chosen"
