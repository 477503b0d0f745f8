"""Reading one model file or folder for the catalog (``easel.shared.catalog``): its
fingerprint and what it is, from headers and configs only, in this process or, for many
files, in worker processes (JSON parsing of large headers is the scan's cost).

**Fingerprints** identify a file without reading its weights: the SHA-256 of
``easel-fingerprint-1``, the header bytes (a safetensors file's length prefix and JSON
header with every tensor's name, dtype, shape and byte range and its metadata; a torch
zip file's ``data.pkl``; a GGUF file's first 4 KiB) and the file size. Two files share one
exactly when they hold the same tensors at the same places with the same metadata: a
copy, or two fine-tunes saved alike (headers do not see the weights' values). A diffusers
folder's is the SHA-256 of its ``model_index.json`` and the relative path, size and, in a
hub cache, blob name (a content hash) of every file.

An upscaler model (a file of an upscaler folder) is not classified by its keys: its folder
says what it is, and only a ``.safetensors`` file's header is checked for being readable
(``upscaler_facts``).

Torch-free, like the rest of the catalog.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import struct
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from easel.shared.classify import (
    BASE_OF_ARCHITECTURE,
    FAMILY_OF_ARCHITECTURE,
    LATENT_FAMILIES,
    Classification,
    Kind,
    classify,
    unet_width_base,
)
from easel.shared.families import FamilyName, family_from_model_index
from easel.shared.weights_header import (
    MAX_HEADER_BYTES,
    MAX_PICKLE_BYTES,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    TensorInfo,
    UnreadableWeights,
    WeightsHeader,
    read_header,
)

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")
"""The files of an upscaler folder that are upscalers (AUTOMATIC1111's list; spandrel loads them)."""
PARALLEL_FROM = 200
"""Files to read from which a scan (``processes=None``) reads in worker processes."""
MAX_PROCESSES = 8
COMPONENT_CLASSES = {
    "ControlNetModel": Kind.CONTROLNET,
    "SD3ControlNetModel": Kind.CONTROLNET,
    "FluxControlNetModel": Kind.CONTROLNET,
    "AutoencoderKL": Kind.VAE,
}
"""The ``config.json`` classes whose folder is one catalog entry (a ControlNet or VAE)."""


def is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder (False when it cannot be told)."""
    try:
        return path.is_dir()
    except OSError:
        return False


# --- files ---------------------------------------------------------------------------------


def header_bytes(path: Path, size: int) -> bytes:
    """The bytes a file's fingerprint covers (module docstring); what can be read of them
    when the file is damaged (its reason comes from ``read_header``)."""
    suffix = path.suffix.lower()
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            with path.open("rb") as handle:
                start = handle.read(8)
                if len(start) < 8:
                    return start
                (length,) = struct.unpack("<Q", start)
                if length > MAX_HEADER_BYTES or 8 + length > size:
                    return start
                return start + handle.read(length)
        if suffix in PICKLE_SUFFIXES:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if names and archive.getinfo(names[0]).file_size <= MAX_PICKLE_BYTES:
                    return archive.read(names[0])
        with path.open("rb") as handle:
            return handle.read(4096)
    except (OSError, zipfile.BadZipFile, ValueError):
        return b""


def fingerprint_of(header: bytes, size: int) -> str:
    """The fingerprint of a file with these header bytes and size (module docstring)."""
    digest = hashlib.sha256(b"easel-fingerprint-1\n")
    digest.update(header)
    digest.update(b"\n%d" % size)
    return digest.hexdigest()


class _LazyTensors(Mapping[str, TensorInfo]):
    """A parsed safetensors header's tensor table, each entry made a ``TensorInfo`` only
    when looked up: classification looks at a few shapes of thousands."""

    def __init__(self, table: dict[str, Any]) -> None:
        self._table = table

    def __getitem__(self, key: str) -> TensorInfo:
        entry = self._table[key]
        return TensorInfo(tuple(entry["shape"]), str(entry["dtype"]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: object) -> bool:
        return key in self._table


def _parse_safetensors(path: Path, raw: bytes, size: int) -> WeightsHeader | None:
    """The header of a sound safetensors file from its header bytes (already read for
    the fingerprint), without ``read_header``'s per-tensor work; ``None`` when anything
    is off, for ``read_header`` to say what."""
    try:
        table = json.loads(raw[8:])
        if not isinstance(table, dict):
            return None
        metadata = table.pop("__metadata__", None)
        end = max((entry["data_offsets"][1] for entry in table.values()), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    if not isinstance(end, int) or len(raw) + end > size:
        return None
    clean = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return WeightsHeader(path, "safetensors", _LazyTensors(table), clean)


def classify_file(path: Path, raw: bytes, size: int) -> Classification:
    """What the file is; a file that cannot be read or classified says why (never raises)."""
    if path.suffix.lower() == GGUF_SUFFIX:
        problem = "GGUF (quantised) weights: Easel does not load them"
        return Classification(None, format="gguf", problem=problem)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        header = _parse_safetensors(path, raw, size)
        if header is not None:
            try:
                return classify(header)
            except (KeyError, TypeError, ValueError, IndexError):
                pass  # a malformed tensor entry: read_header names it
    try:
        return classify(read_header(path))
    except UnreadableWeights as exc:
        return Classification(None, problem=str(exc))
    except Exception as exc:  # a bug must not end the scan: the file is listed with it
        log.exception("could not classify %s", path)
        return Classification(None, problem=f"could not classify it ({type(exc).__name__}: {exc})")


def classify_upscaler(path: Path, raw: bytes, size: int) -> Classification:
    """An upscaler model file, as its folder says (no key is read: spandrel tells the
    architecture when the worker loads it). A ``.safetensors`` file must have a sound
    header; a PyTorch file is taken as it is (its load says what is wrong with it), unless
    it is empty. Never raises."""
    fmt = "safetensors" if path.suffix.lower() in SAFETENSORS_SUFFIXES else "pickle"
    if size == 0:
        return Classification(
            Kind.UPSCALER, format=fmt, problem=f"{path.name}: an empty file (a partial copy?)"
        )
    if fmt == "safetensors" and _parse_safetensors(path, raw, size) is None:
        try:
            read_header(path)
        except UnreadableWeights as exc:
            return Classification(Kind.UPSCALER, format=fmt, problem=str(exc))
        except Exception as exc:  # a bug must not end the scan: the file is listed with it
            log.exception("could not read %s", path)
            return Classification(
                Kind.UPSCALER, format=fmt, problem=f"could not read it ({type(exc).__name__})"
            )
    return Classification(Kind.UPSCALER, format=fmt)


def upscaler_facts(path: Path, size: int) -> tuple[str, Classification]:
    """The fingerprint and classification of the upscaler file at ``path`` (of ``size``
    bytes): its header bytes only are read."""
    raw = header_bytes(path, size)
    return fingerprint_of(raw, size), classify_upscaler(path, raw, size)


# --- diffusers folders -----------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def classify_pipeline(folder: Path) -> Classification:
    """A diffusers pipeline folder: its family from ``model_index.json``, its
    architecture from the UNet's or transformer's ``config.json``."""
    try:
        family = family_from_model_index(folder)
    except ValueError as exc:
        return Classification(Kind.DIFFUSERS, format="diffusers", problem=str(exc))
    if family is None:
        return Classification(Kind.DIFFUSERS, format="diffusers", problem="model_index.json is missing")
    index = read_json(folder / "model_index.json")
    missing = [
        name
        for name, value in sorted(index.items())
        if not name.startswith("_")
        and isinstance(value, list)
        and value[:1] != [None]
        and not _complete_component(folder / name)
    ]
    problem = None
    if missing:
        problem = f"incomplete: no weights or folder for {', '.join(missing)} (an interrupted download?)"
    architecture = _pipeline_architecture(folder)
    if architecture is not None and FAMILY_OF_ARCHITECTURE.get(architecture) is not family.name:
        architecture = None  # a config that contradicts model_index.json: trust the pipeline class
    base = BASE_OF_ARCHITECTURE.get(architecture or "")
    context = _cross_attention_width(folder)
    if base is None and family.name is FamilyName.SD and context:
        base = unet_width_base(context)  # trained at another size: its adapters are read alike
    return Classification(
        Kind.DIFFUSERS,
        architecture=architecture,
        family=family.name,
        families=(family.name,),
        base=base,
        format="diffusers",
        components=tuple(
            name
            for name, v in sorted(index.items())
            if not name.startswith("_") and isinstance(v, list) and v[0]
        ),
        problem=problem,
    )


def _complete_component(folder: Path) -> bool:
    """A component folder exists, and one with a model ``config.json`` holds weights."""
    if not is_dir(folder):
        return False
    if not (folder / "config.json").exists():
        return True  # a scheduler, tokenizer or feature extractor: configs only
    try:
        return any(
            p.name.endswith((".safetensors", ".bin", ".index.json")) and p.exists() for p in folder.iterdir()
        )
    except OSError:
        return False


def _cross_attention_width(folder: Path) -> int | None:
    context = read_json(folder / "unet" / "config.json").get("cross_attention_dim")
    context = context[0] if isinstance(context, list) and context else context
    return context if isinstance(context, int) else None


def _pipeline_architecture(folder: Path) -> str | None:
    unet = read_json(folder / "unet" / "config.json")
    if unet:
        context = unet.get("cross_attention_dim")
        context = context[0] if isinstance(context, list) and context else context
        architecture = {768: "v1", 1024: "v2", 2048: "xl_base", 1280: "xl_refiner"}.get(context or 0)
        if architecture and unet.get("in_channels") == 9:
            architecture = {"v1": "inpainting", "v2": "inpainting_v2", "xl_base": "xl_inpaint"}.get(
                architecture
            )
        return architecture
    transformer = read_json(folder / "transformer" / "config.json")
    name = transformer.get("_class_name")
    if name == "FluxTransformer2DModel":
        if transformer.get("in_channels") == 384:
            return "flux-fill"
        return "flux-dev" if transformer.get("guidance_embeds") else "flux-schnell"
    if name == "SD3Transformer2DModel":
        width = int(transformer.get("num_attention_heads", 0)) * int(transformer.get("attention_head_dim", 0))
        if width == 2432:
            return "sd35_large"
        if width == 1536:
            return "sd35_medium" if transformer.get("dual_attention_layers") else "sd3"
    return None


def classify_component(folder: Path, config: dict[str, Any]) -> Classification:
    """A diffusers ControlNet or VAE folder (``config.json`` + weights)."""
    kind = COMPONENT_CLASSES[str(config.get("_class_name"))]
    problem = None if _complete_component(folder) else "no weights file beside config.json"
    if kind is Kind.VAE:
        value = config.get("latent_channels")
        latent = value if isinstance(value, int) else None
        families = LATENT_FAMILIES.get(latent or 0, ())
        if not families and problem is None:
            problem = f"a VAE of {latent} latent channels: no Easel model family uses it"
        return Classification(
            Kind.VAE, families=families, format="diffusers", latent_channels=latent, problem=problem
        )
    name = config.get("_class_name")
    architecture = {"FluxControlNetModel": "flux-dev", "SD3ControlNetModel": "sd3"}.get(str(name))
    if architecture is None:
        context = config.get("cross_attention_dim")
        architecture = {768: "v1", 1024: "v2", 2048: "xl_base"}.get(
            context if isinstance(context, int) else 0
        )
        if architecture is None and problem is None:
            problem = f"a ControlNet of cross-attention width {context}: no known base model"
    family = FAMILY_OF_ARCHITECTURE.get(architecture or "")
    return Classification(
        Kind.CONTROLNET,
        architecture=architecture,
        family=family,
        families=(family,) if family else (),
        base=BASE_OF_ARCHITECTURE.get(architecture or ""),
        format="diffusers",
        problem=problem,
    )


# --- folders -------------------------------------------------------------------------------


def folder_listing(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under ``folder``, links followed;
    a link to nothing (a download in progress) counts as size -1."""
    listing = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            try:
                info = path.stat()
                listing.append((path.relative_to(folder).as_posix(), info.st_size, info.st_mtime_ns))
            except OSError:
                listing.append((path.relative_to(folder).as_posix(), -1, 0))
    return listing


def blob_name(path: Path) -> str:
    """A hub cache file's blob (its content hash); empty for other files."""
    try:
        if path.is_symlink():
            return os.readlink(path).rsplit("/", 1)[-1]
    except OSError:
        pass
    return ""


def hub_snapshot(repo: Path) -> Path | None:
    """The snapshot ``refs/main`` names, else the newest with a model_index.json."""
    try:
        ref = (repo / "refs" / "main").read_text().strip()
        if (repo / "snapshots" / ref / "model_index.json").exists():
            return repo / "snapshots" / ref
    except OSError:
        pass
    try:
        snapshots = [p for p in (repo / "snapshots").iterdir() if (p / "model_index.json").exists()]
    except OSError:
        return None
    return max(snapshots, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)


def file_facts(
    path: Path, size: int, known: Mapping[str, Classification]
) -> tuple[str, Classification, bool]:
    """The fingerprint and classification of the file at ``path`` (of ``size`` bytes),
    and whether its header was parsed (False: a header in ``known`` already)."""
    raw = header_bytes(path, size)
    fingerprint = fingerprint_of(raw, size)
    found = known.get(fingerprint)
    if found is not None:
        return fingerprint, found, False
    return fingerprint, classify_file(path, raw, size), True


def read_files(
    files: Sequence[tuple[Path, int]], known: Mapping[str, Classification], processes: int | None = None
) -> list[tuple[str, Classification, bool]]:
    """``file_facts`` of every (path, size) of ``files``, in order: in this process, or
    in ``processes`` worker processes (None: one per CPU, up to ``MAX_PROCESSES``, when
    there are ``PARALLEL_FROM`` files or more). Worker processes are started with
    ``spawn`` (safe in a threaded process) and end with the call; when they cannot be
    had the files are read here."""
    count = processes if processes is not None else min(os.cpu_count() or 1, MAX_PROCESSES)
    if processes is None and len(files) < PARALLEL_FROM:
        count = 1
    count = min(count, len(files))
    if count > 1:
        try:
            return _read_in_processes(files, known, count)
        except Exception as exc:  # no child processes here (a daemon, a limit): read them in this one
            log.warning("could not read model headers in %d processes (%s); reading them in one", count, exc)
    seen = dict(known)
    results = []
    for path, size in files:
        facts = file_facts(path, size, seen)
        seen.setdefault(facts[0], facts[1])
        results.append(facts)
    return results


_KNOWN: frozenset[str] = frozenset()


def _remember(known: frozenset[str]) -> None:
    global _KNOWN
    _KNOWN = known


def _facts_in_process(item: tuple[str, int]) -> tuple[str, Classification | None]:
    """A worker process's ``file_facts``: no classification for a header already known."""
    path, size = Path(item[0]), item[1]
    raw = header_bytes(path, size)
    fingerprint = fingerprint_of(raw, size)
    if fingerprint in _KNOWN:
        return fingerprint, None
    return fingerprint, classify_file(path, raw, size)


def _read_in_processes(
    files: Sequence[tuple[Path, int]], known: Mapping[str, Classification], count: int
) -> list[tuple[str, Classification, bool]]:
    context = multiprocessing.get_context("spawn")
    items = [(str(path), size) for path, size in files]
    chunk = max(1, len(items) // (count * 8))
    with ProcessPoolExecutor(
        count, mp_context=context, initializer=_remember, initargs=(frozenset(known),)
    ) as pool:
        found = list(pool.map(_facts_in_process, items, chunksize=chunk))
    results: list[tuple[str, Classification, bool]] = []
    for fingerprint, classification in found:
        if classification is None:
            results.append((fingerprint, known[fingerprint], False))
        else:
            results.append((fingerprint, classification, True))
    return results


def folder_facts(folder: Path, config: dict[str, Any] | None) -> tuple[str, Classification]:
    """The fingerprint and classification of a diffusers pipeline folder (``config``
    None) or of a ControlNet or VAE folder whose ``config.json`` is ``config``."""
    digest = hashlib.sha256(b"easel-folder-1\n")
    if config is None:
        with contextlib.suppress(OSError):
            digest.update((folder / "model_index.json").read_bytes())
    for name, file_size, _ in folder_listing(folder):
        digest.update(f"\n{name}\t{file_size}\t{blob_name(folder / name)}".encode())
    classification = classify_pipeline(folder) if config is None else classify_component(folder, config)
    return digest.hexdigest(), classification
