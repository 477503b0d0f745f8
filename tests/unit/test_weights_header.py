"""Reading a weights file's tensor table without loading it (shared/weights_header.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from easel.shared.weights_header import TensorInfo, UnreadableWeights, read_header

TENSORS = {"a.weight": torch.zeros(3, 4, dtype=torch.float16), "b": torch.ones(2)}
EXPECTED = {"a.weight": TensorInfo((3, 4), "F16"), "b": TensorInfo((2,), "F32")}


def test_safetensors_header_gives_names_shapes_dtypes_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(TENSORS, str(path), metadata={"ss_network_module": "networks.lora"})
    header = read_header(path)
    assert (header.format, dict(header.tensors)) == ("safetensors", EXPECTED)
    assert header.metadata == {"ss_network_module": "networks.lora"}
    assert header.shape("a.weight") == (3, 4) and header.shape("missing") is None


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "lightning-state_dict"])
def test_torch_zip_checkpoint_is_read_without_running_it(tmp_path: Path, wrap: bool) -> None:
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": TENSORS, "global_step": 3} if wrap else TENSORS, str(path))
    header = read_header(path)
    assert (header.format, dict(header.tensors)) == ("pickle", EXPECTED)


def test_an_embedding_pt_nests_its_vectors(tmp_path: Path) -> None:
    path = tmp_path / "style.pt"
    torch.save({"string_to_param": {"*": torch.nn.Parameter(torch.zeros(2, 768))}, "name": "style"}, path)
    assert read_header(path).tensors == {"string_to_param.*": TensorInfo((2, 768), "F32")}


def test_a_pickle_naming_other_code_runs_none_of_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": Boom()}, path)
    assert dict(read_header(path).tensors) == {"w": TensorInfo((2,), "F32")}
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("short.safetensors", b"1234", "too short"),
        ("junk.safetensors", b"12345678junk", "does not fit the file"),
        ("notes.ckpt", b"plain text", "not a PyTorch zip checkpoint"),
        ("readme.txt", b"hello", "not a weights file"),
    ],
)
def test_files_that_are_not_weights_say_why(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableWeights, match=reason):
        read_header(path)


def test_a_partial_copy_is_named_as_one(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UnreadableWeights, match="partial copy"):
        read_header(path)
