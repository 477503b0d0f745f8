"""The models a machine already has: every checkpoint, diffusers folder, LoRA, VAE,
textual-inversion embedding, ControlNet, text encoder and upscaler under some folders, read
from file headers only (no weight is read, torch is not imported: docs/design.md principle 3).

``scan(roots, previous)`` recognises each root as one of:

- an AUTOMATIC1111 ``models`` folder (``Stable-diffusion/``, ``Lora/``, ``LyCORIS/``,
  ``VAE/``, ``ControlNet/``, and the upscaler folders ``ESRGAN/``, ``RealESRGAN/``,
  ``SwinIR/``, ``DAT/``, ``HAT/``), with the ``embeddings/`` folder beside it; A1111's
  ``embeddings/`` folder given on its own; or the webui folder holding both;
- a ComfyUI ``models`` folder (``checkpoints/``, ``diffusion_models/``, ``unet/``,
  ``loras/``, ``vae/``, ``embeddings/``, ``controlnet/``, ``text_encoders/``, ``clip/``,
  ``diffusers/``, ``upscale_models/``), or the ComfyUI folder holding it;
- a Hugging Face hub cache (``models--ORG--NAME/snapshots/REV/model_index.json``: the
  pipeline repositories, named ``ORG/NAME``; other repositories are skipped);
- any other folder: every file is classified by its keys alone.

Everywhere, a folder with ``model_index.json`` is one diffusers pipeline, and a folder
whose ``config.json`` names a ``ControlNetModel`` or ``AutoencoderKL`` one ControlNet or
VAE. A file in a kind's folder whose keys say it is another kind (a LoRA in
``checkpoints/``) is listed unavailable, as is a partial, corrupt, unsupported or
non-model file, each with its reason; A1111's ``NAME.vae.pt`` beside checkpoints is a VAE.
An upscaler folder's ``.pth``, ``.pt`` and ``.safetensors`` files are upscalers because of
where they are (their keys are not read: spandrel tells their architecture on the worker);
a ``.safetensors`` one whose header cannot be read is unavailable; other files there are
not listed. An unreadable folder is a problem of the catalog; nothing stops the scan.

**Names.** A file's name is its path relative to its kind's folder, without suffix, with
``/`` between folders (``sub/name``); a diffusers folder's is its relative path, a hub
model's ``ORG/NAME``; a LoRA saved as a folder (``pytorch_lora_weights.safetensors``,
``adapter_model.safetensors``) takes the folder's. Each part is made safe for URLs and
A1111 ``<lora:NAME:w>`` tags: Unicode NFC, the characters ``: < > ? # % \\ " | *`` and
control characters become ``_``, runs of whitespace one space, leading and trailing
spaces and dots go (an empty part is ``_``). Names over ``MAX_NAME_LENGTH`` characters
are listed unavailable. Checkpoints and diffusers folders share one namespace, each other
kind (upscalers too) has its own. When two files get one name the first in this order
keeps it and the other is reported as a problem naming both: available before
unavailable, then the earlier root, then the kind's folders in the order above, then
``.safetensors`` before a folder, ``.ckpt``, ``.pt``/``.pth``, ``.bin``, then the path.

**Fingerprints** identify a file without reading its weights (the SHA-256 of its header
bytes and size; ``easel.shared.catalog_read`` says exactly what they cover).

**Rescans** reuse the ``previous`` catalog's facts for every file whose (path, size,
mtime_ns) is unchanged, and the classification of any header already seen (same
fingerprint), so a rescan of an unchanged folder reads no header. Headers of new files
are read in worker processes when there are many (JSON parsing is the cost).
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from easel.shared.adapters import CONTROLNET_FAMILIES
from easel.shared.catalog_read import (
    COMPONENT_CLASSES,
    GGUF_SUFFIX,
    UPSCALER_SUFFIXES,
    folder_facts,
    folder_listing,
    hub_snapshot,
    is_dir,
    read_files,
    read_json,
    upscaler_facts,
)
from easel.shared.classify import Classification, Kind, fits
from easel.shared.families import FamilyName
from easel.shared.weights_header import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES

MAX_NAME_LENGTH = 128
"""The longest name a job may give (``LoraRef.name``'s limit)."""

SCANNED_SUFFIXES = (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES, GGUF_SUFFIX)
_SUFFIX_RANK = {".safetensors": 0, ".sft": 0, "": 1, ".ckpt": 2, ".pt": 3, ".pth": 3, ".bin": 4, ".gguf": 5}
_LORA_FOLDER_FILES = {"pytorch_lora_weights", "adapter_model"}


class Status(StrEnum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


class Layout(StrEnum):
    """How a root's folders are laid out."""

    A1111 = "a1111"
    COMFYUI = "comfyui"
    EMBEDDINGS = "embeddings"  # A1111's embeddings/ folder on its own
    HUB = "hub"
    FOLDER = "folder"
    MISSING = "missing"  # not a readable folder


A1111_FOLDERS: tuple[tuple[str, Kind], ...] = (
    ("Stable-diffusion", Kind.CHECKPOINT),
    ("Lora", Kind.LORA),
    ("LyCORIS", Kind.LORA),
    ("VAE", Kind.VAE),
    ("ControlNet", Kind.CONTROLNET),
    ("ESRGAN", Kind.UPSCALER),  # A1111's upscaler folders, each read by spandrel alike
    ("RealESRGAN", Kind.UPSCALER),
    ("SwinIR", Kind.UPSCALER),
    ("DAT", Kind.UPSCALER),
    ("HAT", Kind.UPSCALER),
    ("embeddings", Kind.EMBEDDING),
)
COMFYUI_FOLDERS: tuple[tuple[str, Kind], ...] = (
    ("checkpoints", Kind.CHECKPOINT),
    ("diffusers", Kind.DIFFUSERS),
    ("diffusion_models", Kind.CHECKPOINT),
    ("unet", Kind.CHECKPOINT),
    ("loras", Kind.LORA),
    ("vae", Kind.VAE),
    ("embeddings", Kind.EMBEDDING),
    ("controlnet", Kind.CONTROLNET),
    ("text_encoders", Kind.TEXT_ENCODER),
    ("clip", Kind.TEXT_ENCODER),
    ("upscale_models", Kind.UPSCALER),
)
_HOME_OF: dict[Layout, dict[Kind, str]] = {
    Layout.A1111: {kind: name for name, kind in reversed(A1111_FOLDERS)},
    Layout.COMFYUI: {kind: name for name, kind in reversed(COMFYUI_FOLDERS)},
}


def _namespace(kind: Kind | None) -> str:
    """Checkpoints and diffusers folders are both models: one namespace."""
    if kind in (Kind.CHECKPOINT, Kind.DIFFUSERS):
        return "model"
    return kind.value if kind is not None else "unknown"


@dataclass(frozen=True)
class Entry:
    """One model file or folder: what it is, where, and whether Easel can serve it."""

    kind: Kind | None
    """The kind of the folder it is in, else what its keys say (``None``: an unrecognised
    file of a plain folder); ``classification.kind`` is always what its keys say."""
    name: str
    path: Path
    root: Path
    """The folder its name is relative to (its kind's folder, or the root scanned)."""
    layout: Layout
    size: int
    """Bytes: the file's, or the sum of a folder's files."""
    mtime_ns: int
    """The file's, or the latest of a folder's files."""
    fingerprint: str
    classification: Classification
    status: Status
    reason: str | None = None
    """Why it is unavailable."""
    original_config: Path | None = None
    """An A1111 original-config ``.yaml`` beside a checkpoint (``NAME.yaml``)."""

    @property
    def available(self) -> bool:
        return self.status is Status.AVAILABLE

    @property
    def family(self) -> FamilyName | None:
        return self.classification.family

    @property
    def families(self) -> tuple[FamilyName, ...]:
        return self.classification.families

    @property
    def architecture(self) -> str | None:
        return self.classification.architecture

    @property
    def base(self) -> str | None:
        return self.classification.base

    @property
    def format(self) -> str | None:
        return self.classification.format

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (``Entry.from_dict`` reads it back)."""
        c = self.classification
        return {
            "kind": _value(self.kind),
            "name": self.name,
            "path": str(self.path),
            "root": str(self.root),
            "layout": self.layout.value,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "fingerprint": self.fingerprint,
            "status": self.status.value,
            "reason": self.reason,
            "original_config": str(self.original_config) if self.original_config else None,
            "detected_kind": _value(c.kind),
            "architecture": c.architecture,
            "family": _value(c.family),
            "families": [f.value for f in c.families],
            "base": c.base,
            "format": c.format,
            "components": list(c.components),
            "vectors": c.vectors,
            "latent_channels": c.latent_channels,
            "prediction": c.prediction,
            "problem": c.problem,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        classification = Classification(
            kind=_kind(data["detected_kind"]),
            architecture=data["architecture"],
            family=FamilyName(data["family"]) if data["family"] else None,
            families=tuple(FamilyName(f) for f in data["families"]),
            base=data["base"],
            format=data["format"],
            components=tuple(data["components"]),
            vectors=data["vectors"],
            latent_channels=data["latent_channels"],
            prediction=data["prediction"],
            problem=data["problem"],
        )
        config = data["original_config"]
        return cls(
            kind=_kind(data["kind"]),
            name=data["name"],
            path=Path(data["path"]),
            root=Path(data["root"]),
            layout=Layout(data["layout"]),
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            fingerprint=data["fingerprint"],
            classification=classification,
            status=Status(data["status"]),
            reason=data["reason"],
            original_config=Path(config) if config else None,
        )


def _value(item: StrEnum | None) -> str | None:
    return item.value if item is not None else None


def _kind(value: str | None) -> Kind | None:
    return Kind(value) if value else None


@dataclass(frozen=True)
class Problem:
    """Something about the folders rather than one entry: an unreadable folder or
    root, or a name two files want (``other``: the file that kept it)."""

    path: Path
    message: str
    other: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "message": self.message,
            "other": str(self.other) if self.other else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        return cls(Path(data["path"]), data["message"], Path(data["other"]) if data.get("other") else None)


@dataclass(frozen=True)
class Root:
    path: Path
    layout: Layout


@dataclass(frozen=True)
class ScanStats:
    """What one scan did: files and folders it looked at, headers it read, facts it took
    from the previous catalog (same path, size and mtime) or from a header already seen."""

    files: int = 0
    headers_read: int = 0
    reused: int = 0
    same_header: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Catalog:
    """The result of ``scan``: plain data, in a deterministic order (entries by
    namespace, then name; problems by path)."""

    roots: tuple[Root, ...] = ()
    entries: tuple[Entry, ...] = ()
    problems: tuple[Problem, ...] = ()
    stats: ScanStats = field(default_factory=ScanStats)

    def of_kind(self, *kinds: Kind, available: bool = True) -> tuple[Entry, ...]:
        """The entries of ``kinds`` (only the available ones unless ``available`` is False)."""
        return tuple(e for e in self.entries if e.kind in kinds and (e.available or not available))

    def get(self, kind: Kind, name: str) -> Entry | None:
        """The entry called ``name`` in ``kind``'s namespace (checkpoints and diffusers
        folders share one), available or not."""
        namespace = _namespace(kind)
        return next((e for e in self.entries if e.name == name and _namespace(e.kind) == namespace), None)

    def fitting(self, model: Entry, kind: Kind) -> tuple[Entry, ...]:
        """The available entries of ``kind`` that fit ``model`` (``classify.fits``)."""
        return tuple(e for e in self.of_kind(kind) if fits(e.classification, model.classification))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (``Catalog.from_dict`` reads it back, e.g. as ``previous``)."""
        return {
            "roots": [{"path": str(r.path), "layout": r.layout.value} for r in self.roots],
            "entries": [e.to_dict() for e in self.entries],
            "problems": [p.to_dict() for p in self.problems],
            "stats": {
                "files": self.stats.files,
                "headers_read": self.stats.headers_read,
                "reused": self.stats.reused,
                "same_header": self.stats.same_header,
                "seconds": self.stats.seconds,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Catalog:
        return cls(
            roots=tuple(Root(Path(r["path"]), Layout(r["layout"])) for r in data["roots"]),
            entries=tuple(Entry.from_dict(e) for e in data["entries"]),
            problems=tuple(Problem.from_dict(p) for p in data["problems"]),
            stats=ScanStats(**data.get("stats", {})),
        )


# --- names -----------------------------------------------------------------------------------

_UNSAFE = re.compile(r'[:<>?#%\\"|*\x00-\x1f\x7f]')


def safe_name(relative: PurePosixPath | str) -> str:
    """``relative`` (a path, ``/``-separated, without suffix) made a name: see the
    module docstring."""
    parts = []
    for part in PurePosixPath(relative).parts:
        part = " ".join(unicodedata.normalize("NFC", part).split())
        part = _UNSAFE.sub("_", part).strip(" .")
        parts.append(part or "_")
    return "/".join(parts) or "_"


# --- layouts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """A folder to scan: the kind its files should be (None: any) and its rank."""

    folder: Path
    kind: Kind | None
    layout: Layout
    rank: int


def detect_layout(root: Path) -> Layout:
    """How ``root`` is laid out (see the module docstring)."""
    return _places(Path(root))[0]


def _places(root: Path) -> tuple[Layout, list[_Place]]:
    if not is_dir(root):
        return Layout.MISSING, []
    found = _models_folder(root) or _models_folder(root / "models")  # or the webui / ComfyUI folder
    if found is not None:
        return found
    if root.name.lower() == "embeddings":
        return Layout.EMBEDDINGS, [_Place(root, Kind.EMBEDDING, Layout.EMBEDDINGS, 0)]
    for hub in (root, root / "hub"):
        try:
            if any(p.name.startswith("models--") and p.is_dir() for p in hub.iterdir()):
                return Layout.HUB, [_Place(hub, Kind.DIFFUSERS, Layout.HUB, 0)]
        except OSError:
            continue
    return Layout.FOLDER, [_Place(root, None, Layout.FOLDER, 0)]


def _models_folder(root: Path) -> tuple[Layout, list[_Place]] | None:
    """An A1111 or ComfyUI ``models`` folder's places (the layout with more of its
    folders present wins); None when it has neither's."""
    a1111 = sum(is_dir(root / name) for name, _ in A1111_FOLDERS if name != "embeddings")
    comfy = sum(is_dir(root / name) for name, _ in COMFYUI_FOLDERS if name != "embeddings")
    if not (a1111 or comfy):
        return None
    layout, table = (Layout.A1111, A1111_FOLDERS) if a1111 >= comfy else (Layout.COMFYUI, COMFYUI_FOLDERS)
    places = [_Place(root / name, kind, layout, rank) for rank, (name, kind) in enumerate(table)]
    if layout is Layout.A1111 and root.name == "models" and not is_dir(root / "embeddings"):
        places.append(_Place(root.parent / "embeddings", Kind.EMBEDDING, layout, len(table)))  # A1111's place
    return layout, [p for p in places if is_dir(p.folder)]


# --- the scan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """An entry before names are settled."""

    entry: Entry
    root_index: int
    rank: int
    relative: PurePosixPath  # the name's source: a path without suffix
    suffix_rank: int  # .safetensors first, then a folder, .ckpt, ...


@dataclass(frozen=True)
class _File:
    """A file found by the walk: where, its stat, what its name and entry take."""

    root_index: int
    place: _Place
    path: Path
    size: int
    mtime_ns: int
    relative: PurePosixPath
    original_config: Path | None


class _Scanner:
    def __init__(self, previous: Catalog | None, processes: int | None) -> None:
        self.previous = {str(e.path): e for e in previous.entries} if previous else {}
        self.processes = processes
        self.found: list[_Found] = []
        self.pending: list[_File] = []  # new or changed: their headers are read in finish()
        self.problems: list[Problem] = []
        self.roots: list[Root] = []
        self.seen_files: set[tuple[int, int]] = set()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.files = self.reused = 0

    def scan_root(self, index: int, root: Path) -> None:
        layout, places = _places(root)
        self.roots.append(Root(root, layout))
        if layout is Layout.MISSING:
            self.problems.append(Problem(root, "not a readable folder: nothing scanned there"))
            return
        for place in places:
            if place.layout is Layout.HUB:
                self._hub(index, place)
            else:
                self._walk(index, place, place.folder, PurePosixPath())

    # folders

    def _list(self, folder: Path) -> list[os.DirEntry[str]] | None:
        try:
            identity = os.stat(folder)
            key = (identity.st_dev, identity.st_ino)
            if key in self.seen_dirs:
                return None  # a link back to a folder already scanned
            self.seen_dirs.add(key)
            with os.scandir(folder) as listing:
                return sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            self.problems.append(Problem(folder, f"cannot read folder: {exc.strerror or exc}"))
            return None

    def _walk(self, index: int, place: _Place, folder: Path, relative: PurePosixPath) -> None:
        items = self._list(folder)
        if items is None:
            return
        names = {item.name for item in items}
        suffixes = UPSCALER_SUFFIXES if place.kind is Kind.UPSCALER else SCANNED_SUFFIXES
        if "model_index.json" in names:
            self._folder_entry(index, place, folder, relative or PurePosixPath(folder.name), None)
            return
        if "config.json" in names:
            config = read_json(folder / "config.json")
            if str(config.get("_class_name")) in COMPONENT_CLASSES:
                self._folder_entry(index, place, folder, relative or PurePosixPath(folder.name), config)
                return
        for item in items:
            if item.name.startswith("."):
                continue
            try:
                is_folder = item.is_dir()
                is_file = not is_folder and item.is_file()
            except OSError:
                continue
            if is_folder:
                self._walk(index, place, Path(item.path), relative / item.name)
            elif is_file and item.name.lower().endswith(suffixes):
                self._file(index, place, Path(item.path), relative, names)

    def _hub(self, index: int, place: _Place) -> None:
        for repo in self._list(place.folder) or []:
            if not repo.name.startswith("models--"):
                continue
            snapshot = hub_snapshot(Path(repo.path))
            if snapshot is not None:
                name = PurePosixPath(*repo.name[len("models--") :].split("--"))
                self._folder_entry(index, place, snapshot, name, None)

    # entries

    def _file(
        self, index: int, place: _Place, path: Path, relative: PurePosixPath, siblings: set[str]
    ) -> None:
        try:
            info = path.stat()
        except OSError as exc:  # a link to nothing
            self.problems.append(Problem(path, f"cannot read file: {exc.strerror or exc}"))
            return
        identity = (info.st_dev, info.st_ino)
        if identity in self.seen_files:
            return  # the same file through another root or link
        self.seen_files.add(identity)
        self.files += 1
        stem = path.name[: -len(path.suffix)] if path.suffix else path.name
        name_source = relative / stem
        if stem in _LORA_FOLDER_FILES and relative.parts:
            name_source = relative  # a LoRA saved as a folder takes the folder's name
        yaml = next((path.with_name(stem + s) for s in (".yaml", ".yml") if stem + s in siblings), None)
        found = _File(index, place, path, info.st_size, info.st_mtime_ns, name_source, yaml)
        old = self.previous.get(str(path))
        same = old is not None and old.size == found.size and old.mtime_ns == found.mtime_ns
        if same and old is not None and _by_folder(old.classification) == _by_folder(place):
            self.reused += 1
            self._add(found, old.fingerprint, old.classification)
        else:
            self.pending.append(found)

    def _add(self, found: _File, fingerprint: str, classification: Classification) -> None:
        stem = found.path.name[: -len(found.path.suffix)] if found.path.suffix else found.path.name
        kind, status, reason = _judge(found.place, classification, stem)
        entry = Entry(
            kind=kind,
            name="",
            path=found.path,
            root=found.place.folder,
            layout=found.place.layout,
            size=found.size,
            mtime_ns=found.mtime_ns,
            fingerprint=fingerprint,
            classification=classification,
            status=status,
            reason=reason,
            original_config=found.original_config if kind is Kind.CHECKPOINT else None,
        )
        suffix_rank = _SUFFIX_RANK.get(found.path.suffix.lower(), len(_SUFFIX_RANK))
        self.found.append(_Found(entry, found.root_index, found.place.rank, found.relative, suffix_rank))

    def _folder_entry(
        self, index: int, place: _Place, folder: Path, relative: PurePosixPath, config: dict[str, Any] | None
    ) -> None:
        listing = folder_listing(folder)
        self.files += 1
        size = sum(s for _, s, _ in listing)
        mtime_ns = max((m for _, _, m in listing), default=0)
        old = self.previous.get(str(folder))
        if old is not None and old.size == size and old.mtime_ns == mtime_ns:
            self.reused += 1
            fingerprint, classification = old.fingerprint, old.classification
        else:
            fingerprint, classification = folder_facts(folder, config)
        kind, status, reason = _judge(place, classification, folder.name)
        where = (folder, place.folder, place.layout)
        entry = Entry(kind, "", *where, size, mtime_ns, fingerprint, classification, status, reason)
        self.found.append(_Found(entry, index, place.rank, relative, _SUFFIX_RANK[""]))

    def finish(self, started: float) -> Catalog:
        # Files read by their keys never take an upscaler's facts (told by its folder), nor
        # upscalers theirs, however alike their headers.
        known = {
            e.fingerprint: e.classification
            for e in self.previous.values()
            if not _by_folder(e.classification)
        }
        by_keys = [f for f in self.pending if not _by_folder(f.place)]
        facts = read_files([(f.path, f.size) for f in by_keys], known, self.processes)
        for found, (fingerprint, classification, _) in zip(by_keys, facts, strict=True):
            self._add(found, fingerprint, classification)
        by_folder = [f for f in self.pending if _by_folder(f.place)]
        for found in by_folder:
            self._add(found, *upscaler_facts(found.path, found.size))
        read = sum(1 for *_, parsed in facts if parsed)
        entries = _settle_names(self.found, self.problems)
        stats = ScanStats(
            files=self.files,
            headers_read=read + len(by_folder),
            reused=self.reused,
            same_header=len(facts) - read,
            seconds=round(time.monotonic() - started, 3),
        )
        problems = sorted(self.problems, key=lambda p: (str(p.path), p.message))
        return Catalog(tuple(self.roots), tuple(entries), tuple(problems), stats)


_KIND_WORDS = {
    Kind.CHECKPOINT: "a checkpoint",
    Kind.DIFFUSERS: "a diffusers pipeline",
    Kind.LORA: "a LoRA",
    Kind.VAE: "a VAE",
    Kind.EMBEDDING: "an embedding",
    Kind.CONTROLNET: "a ControlNet",
    Kind.TEXT_ENCODER: "a text encoder",
    Kind.UPSCALER: "an upscaler",
}


def _by_folder(item: _Place | Classification) -> bool:
    """Whether a place's files, or a file of this classification, are told by their
    folder (upscalers) rather than by their keys."""
    return item.kind is Kind.UPSCALER


def describe(classification: Classification) -> str:
    """What a classification says, in words: ``a LoRA (v1, kohya)``."""
    kind = classification.kind
    if kind is None:
        return "not a model file"
    details = [d for d in (classification.architecture, classification.format) if d]
    return _KIND_WORDS[kind] + (f" ({', '.join(details)})" if details else "")


def _judge(place: _Place, c: Classification, stem: str) -> tuple[Kind | None, Status, str | None]:
    """The entry's kind (its folder's, else its keys'), and whether Easel can serve it."""
    unavailable = Status.UNAVAILABLE
    if c.kind is None:
        return place.kind, unavailable, c.problem or "not a model file Easel recognises"
    kind = place.kind or c.kind
    same = c.kind is kind
    if {c.kind, kind} == {Kind.CHECKPOINT, Kind.DIFFUSERS}:  # one namespace: a file or a folder
        kind, same = c.kind, True
    if not same and place.kind is Kind.CHECKPOINT and c.kind is Kind.VAE and stem.lower().endswith(".vae"):
        kind, same = Kind.VAE, True  # A1111: NAME.vae.pt beside the checkpoint
    if not same:
        home = _HOME_OF.get(place.layout, {}).get(c.kind)
        move = f": move it to {home}/" if home else ""
        where = place.folder.name
        return (
            kind,
            unavailable,
            f"its keys say {describe(c)}, but it is in {where}/, the {kind.value} folder{move}",
        )
    if c.problem:
        return kind, unavailable, c.problem
    if kind is Kind.CONTROLNET and c.family is not None and c.family.value not in CONTROLNET_FAMILIES:
        served = ", ".join(CONTROLNET_FAMILIES)
        return kind, unavailable, f"a {c.family.value} ControlNet: Easel serves ControlNets of {served} only"
    return kind, Status.AVAILABLE, None


def _settle_names(found: list[_Found], problems: list[Problem]) -> list[Entry]:
    def order(item: _Found) -> tuple[Any, ...]:
        entry = item.entry
        return (not entry.available, item.root_index, item.rank, item.suffix_rank, str(entry.path))

    winners: dict[tuple[str, str], Entry] = {}
    for item in sorted(found, key=order):
        name = safe_name(item.relative)
        entry = replace(item.entry, name=name)
        if len(name) > MAX_NAME_LENGTH and entry.available:
            reason = f"its name is {len(name)} characters long; names have at most {MAX_NAME_LENGTH}"
            entry = replace(entry, status=Status.UNAVAILABLE, reason=reason)
        key = (_namespace(entry.kind), name)
        kept = winners.get(key)
        if kept is None:
            winners[key] = entry
            continue
        problems.append(
            Problem(
                entry.path,
                f"name {name!r} is taken by {str(kept.path)!r}: this file is not listed",
                kept.path,
            )
        )
    kinds = [*Kind, None]  # files of no known kind last
    return sorted(winners.values(), key=lambda e: (kinds.index(e.kind), e.name))


def scan(roots: Sequence[Path], previous: Catalog | None = None, *, processes: int | None = None) -> Catalog:
    """The catalog of every model under ``roots`` (module docstring). ``previous`` (a
    catalog of an earlier scan) spares reading files that have not changed; the new or
    changed ones are read in ``processes`` worker processes (None: one per CPU when there
    are many, 1: in this process; ``catalog_read.read_files``)."""
    started = time.monotonic()
    scanner = _Scanner(previous, processes)
    for index, root in enumerate(roots):
        scanner.scan_root(index, Path(root))
    return scanner.finish(started)
