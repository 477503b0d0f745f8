"""What a weights file holds, read from its header: tensor names, shapes and dtypes,
without loading a single weight and without torch (the web tier may read files too).

Two on-disk formats cover what people have:

- ``.safetensors``: an 8-byte little-endian length, then a JSON header naming every
  tensor's dtype, shape and byte range (and an optional ``__metadata__`` table).
- ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``: PyTorch's zip format, whose ``data.pkl``
  describes the tensors; it is unpickled with stand-ins for torch's classes (no code of
  the file runs, no storage is read). The legacy pre-1.6 format is refused with a reason.

``read_header`` raises ``UnreadableWeights`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own cap on a header
MAX_PICKLE_BYTES = 256 * 1024 * 1024


class UnreadableWeights(ValueError):
    """A file that is not a weights file Easel can read, with the reason."""


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors' names: F32, F16, BF16, ...


@dataclass(frozen=True)
class WeightsHeader:
    """The tensors of one weights file, by name, and its metadata (safetensors only)."""

    path: Path
    format: str  # "safetensors" or "pickle"
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str] = field(default_factory=dict)

    def shape(self, key: str) -> tuple[int, ...] | None:
        info = self.tensors.get(key)
        return info.shape if info is not None else None

    @property
    def dtypes(self) -> set[str]:
        return {info.dtype for info in self.tensors.values()}


def read_header(path: Path) -> WeightsHeader:
    """The header of the weights file at ``path``; ``UnreadableWeights`` when it is not one."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            return _read_safetensors(path)
        if suffix in PICKLE_SUFFIXES:
            return _read_pickle(path)
    except UnreadableWeights:
        raise
    except OSError as exc:
        raise UnreadableWeights(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    raise UnreadableWeights(f"{path.name}: not a weights file ({', '.join(WEIGHT_SUFFIXES)})")


def _read_safetensors(path: Path) -> WeightsHeader:
    size = path.stat().st_size
    with path.open("rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            raise UnreadableWeights(f"{path.name}: too short for a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", start)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise UnreadableWeights(
                f"{path.name}: header length {length} does not fit the file ({size} bytes): "
                "not a safetensors file, or a partial copy"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise UnreadableWeights(f"{path.name}: safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise UnreadableWeights(f"{path.name}: safetensors header is not a table")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for key, entry in header.items():
        try:
            tensors[key] = TensorInfo(tuple(int(n) for n in entry["shape"]), str(entry["dtype"]))
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise UnreadableWeights(f"{path.name}: tensor {key!r} has no readable shape") from None
    if 8 + length + end > size:
        raise UnreadableWeights(
            f"{path.name}: holds {size} bytes but its header describes {8 + length + end}: a partial copy"
        )
    clean_metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return WeightsHeader(path, "safetensors", tensors, clean_metadata)


# --- PyTorch's zip format -------------------------------------------------------------

_DTYPES = {
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}


@dataclass(frozen=True)
class _Tensor:
    shape: tuple[int, ...]
    dtype: str


class _Storage:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


class _Stub:
    """Whatever class a pickle names that is neither a tensor nor a container: kept as
    an opaque value so the rest of the file can still be read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *args: Any) -> _Tensor:
    dtype = storage.dtype if isinstance(storage, _Storage) else "?"
    return _Tensor(tuple(int(n) for n in size), dtype)


def _rebuild_parameter(data: Any, *args: Any) -> Any:
    return data


class _HeaderUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` with stand-ins: tensors become (shape, dtype), any other
    class a ``_Stub``. Nothing the file names is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict"):
            return {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict}[name]
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        # ("storage", storage_type, key, location, numel): storage_type is a dtype name here
        if isinstance(pid, tuple) and len(pid) > 1:
            kind = pid[1]
            return _Storage(kind if isinstance(kind, str) else getattr(kind, "dtype", "?"))
        return _Storage("?")


def _read_pickle(path: Path) -> WeightsHeader:
    if not zipfile.is_zipfile(path):
        raise UnreadableWeights(
            f"{path.name}: not a PyTorch zip checkpoint (a partial copy, or the legacy pre-1.6 "
            "format, which Easel does not read: re-save it with torch.save or as .safetensors)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise UnreadableWeights(f"{path.name}: a zip file without data.pkl, not a PyTorch checkpoint")
            info = archive.getinfo(names[0])
            if info.file_size > MAX_PICKLE_BYTES:
                raise UnreadableWeights(f"{path.name}: data.pkl is {info.file_size} bytes, too large")
            raw = archive.read(info)
    except zipfile.BadZipFile as exc:
        raise UnreadableWeights(f"{path.name}: damaged zip ({exc})") from None
    try:
        obj = _HeaderUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        raise UnreadableWeights(f"{path.name}: cannot read its tensor table ({type(exc).__name__})") from None
    tensors: dict[str, TensorInfo] = {}
    _collect(obj, "", tensors, depth=0)
    if not tensors:
        raise UnreadableWeights(f"{path.name}: holds no tensors")
    return WeightsHeader(path, "pickle", tensors)


def _collect(obj: Any, prefix: str, out: dict[str, TensorInfo], depth: int) -> None:
    """Flatten nested dicts of tensors into dotted names; a top-level ``state_dict`` (as
    Lightning checkpoints keep it) is read without its own name."""
    if depth > 6:
        return
    if isinstance(obj, _Tensor):
        out[prefix] = TensorInfo(obj.shape, obj.dtype)
    elif isinstance(obj, dict):
        if depth == 0 and isinstance(obj.get("state_dict"), dict):
            _collect(obj["state_dict"], "", out, depth + 1)
            return
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            _collect(value, name, out, depth + 1)
