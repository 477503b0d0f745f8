"""A persistent cache of ``torch.compile`` results, so a restarted worker skips the compile.

Two layers. Inductor's own on-disk caches (FX graphs, AOTAutograd entries, built CPU
kernels; content-addressed by torch) live in ``<EASEL_COMPILE_CACHE>/inductor``
(``use_inductor_dir``), so a second start on the same disk compiles nothing. And after
each warm-up, PyTorch's portable "mega-cache" (``torch.compiler.save_cache_artifacts``)
is kept as one entry per ``CompileKey``: in the folder and, with S3 job storage, under
``compile-cache/`` in the bucket, so the first worker of a model compiles and the others
download. At the next start the entry is loaded back (``load_cache_artifacts``). The key
says whether a start is warm (compile at once, a few seconds) or cold (serve eagerly and
compile in the background, ``compile_switch``). An entry that is corrupt or made for
another key is ignored with a log line; it never fails a start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

FORMAT = 1
"""Bumped whenever Easel's compiled call (``fastpath.compiled_call``) changes its graphs."""

SHARED_PREFIX = "compile-cache/"
"""Where the entries live in the job storage bucket."""

Outcome = Literal["hit", "miss", "corrupt", "mismatch"]


@dataclass(frozen=True)
class CompileKey:
    """Everything that makes a compiled UNet invalid for another start."""

    torch: str
    python: str
    device: str  # kind and capability: ``cuda NVIDIA H100 sm90``, ``cpu x86_64 AVX2``
    model: str  # ``model_identity``
    dtype: str
    shapes: tuple[tuple[int, int], ...]
    batch_sizes: tuple[int, ...]
    settings: tuple[tuple[str, str], ...]  # the Easel settings that change the graph
    format: int = FORMAT

    def digest(self) -> str:
        """A file name for the entry: sha256 of the key's fields."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def fields(self) -> dict[str, Any]:
        """The key as JSON-able values (tuples as lists), as an entry's header stores it."""
        loaded: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return loaded


def device_kind(device: str) -> str:
    """The kind and capability of ``device`` as compiled code depends on them."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda {torch.cuda.get_device_name(index)} sm{major}{minor}"
    return f"cpu {platform.machine()} {torch.backends.cpu.get_cpu_capability()}"


def model_identity(name: str, location: str, unet: Any) -> str:
    """sha256 of the model's name, location and UNet architecture (config, parameter names,
    shapes and dtypes). The weights' values are inputs of the compiled graph, not constants
    (inductor does not freeze them), so new weights of the same shape need no new compile."""
    digest = hashlib.sha256(f"{name}\n{location}\n".encode())
    config = getattr(unet, "config", None)
    if config is not None:
        digest.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    for key, tensor in unet.state_dict().items():
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
    return digest.hexdigest()


def make_key(
    *,
    device: str,
    model: str,
    dtype: str,
    shapes: list[tuple[int, int]],
    batch_sizes: list[int],
    settings: dict[str, str],
) -> CompileKey:
    """The key of a compile on this machine's torch and Python."""
    import torch

    return CompileKey(
        torch=torch.__version__,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        device=device,
        model=model,
        dtype=dtype,
        shapes=tuple(sorted(set(shapes))),
        batch_sizes=tuple(sorted(set(batch_sizes))),
        settings=tuple(sorted(settings.items())),
    )


class SharedStore(Protocol):
    """Where entries are shared between machines (``shared.storage.Storage``'s get and put)."""

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...


def use_inductor_dir(root: Path) -> Path:
    """Point inductor's on-disk caches at ``root/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR``
    names another folder than torch's default (importing ``torch._dynamo`` sets it to the
    default, under /tmp); returns the folder in use. Call before the first compile."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
    if not chosen or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        chosen = str(root / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen
    return Path(chosen)


@dataclass
class CompileCache:
    """Entries (``<digest>.bin``) in ``root``, and in ``shared`` when given."""

    root: Path
    shared: SharedStore | None = None

    def path(self, key: CompileKey) -> Path:
        return self.root / f"{key.digest()}.bin"

    def load(self, key: CompileKey) -> Outcome:
        """Load ``key``'s entry into torch's caches: ``hit``, or why not (logged)."""
        data = self._read(key)
        if data is None:
            log.info("compile cache: no entry for %s", key.digest())
            return "miss"
        outcome = check_entry(data, key)
        if outcome != "hit":
            return outcome
        try:
            import torch

            info = torch.compiler.load_cache_artifacts(data.split(b"\n", 1)[1])
        except Exception as exc:  # torch's own format: anything it cannot read is corrupt
            info, reason = None, str(exc)
        else:
            reason = "torch could not read it"
        if info is None:
            log.warning("compile cache: entry %s is corrupt (%s); compiling afresh", key.digest(), reason)
            return "corrupt"
        log.info("compile cache: loaded entry %s (%d bytes)", key.digest(), len(data))
        return "hit"

    def save(self, key: CompileKey) -> bool:
        """Save what this process compiled as ``key``'s entry; ``False`` (logged) if nothing was."""
        import torch

        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            log.warning("compile cache: torch has nothing to save for %s", key.digest())
            return False
        data = entry(key, artifacts[0])
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self.path(key))  # atomic: a reader never sees half an entry
        if self.shared is not None:
            try:
                self.shared.put(SHARED_PREFIX + self.path(key).name, data, "application/octet-stream")
            except Exception:
                log.exception("compile cache: could not share entry %s", key.digest())
        log.info("compile cache: saved entry %s (%d bytes)", key.digest(), len(data))
        return True

    def _read(self, key: CompileKey) -> bytes | None:
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("compile cache: cannot read %s (%s)", path, exc)
            return None
        if self.shared is None:
            return None
        try:
            data = self.shared.get(SHARED_PREFIX + path.name)
        except Exception as exc:  # absent, or the bucket unreachable: compile here
            log.info("compile cache: no shared entry %s (%s)", path.name, exc)
            return None
        log.info("compile cache: downloaded entry %s (%d bytes)", path.name, len(data))
        return data


def entry(key: CompileKey, payload: bytes) -> bytes:
    """One entry: a JSON header line (the key, the payload's size and sha256), then torch's bytes."""
    header = {"key": key.fields(), "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    return json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def check_entry(data: bytes, key: CompileKey) -> Outcome:
    """``hit`` if ``data`` is a whole entry made for ``key``, else ``corrupt`` or ``mismatch`` (logged)."""
    head, sep, payload = data.partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("key"), dict):
        log.warning("compile cache: entry %s has no header; ignored", key.digest())
        return "corrupt"
    if header["key"] != key.fields():
        changed = sorted(k for k, v in key.fields().items() if header["key"].get(k) != v)
        log.warning("compile cache: entry %s was made for another %s; ignored", key.digest(), changed)
        return "mismatch"
    if header.get("size") != len(payload) or header.get("sha256") != hashlib.sha256(payload).hexdigest():
        log.warning("compile cache: entry %s is corrupt (size or checksum); ignored", key.digest())
        return "corrupt"
    return "hit"
