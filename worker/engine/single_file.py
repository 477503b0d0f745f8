"""Single-file checkpoints (one ``.safetensors`` / ``.ckpt`` in the original LDM key layout)
that need nothing else: the architecture is read from the file's header, and the
diffusers configs and tokenizers ``from_single_file`` needs come with the package.

diffusers' ``from_single_file`` converts the weights itself but, without ``config``,
fetches the component configs of the Hub repository it maps the architecture to
(``DIFFUSERS_DEFAULT_PIPELINE_PATHS``). Easel ships those configs for the architectures
it serves (``single_file_configs/<architecture>/``, no weights) and the CLIP BPE merges
(``bpe_simple_vocab_16e6.txt.gz``, MIT, OpenAI), and materialises a complete config
folder per architecture, tokenizers included, into a cache folder on first use
(``$EASEL_HOME/models/.single-file-configs``). Nothing here contacts a hub.

The architecture is what diffusers' own ``infer_diffusers_model_type`` says of the
file's tensor names and shapes (read from the header, ``easel.shared.weights_header``;
no weight is loaded to tell). An original-config ``.yaml`` beside the checkpoint
(A1111's convention: ``model.yaml`` next to ``model.safetensors``) is passed to diffusers
as ``original_config``; it decides the UNet and VAE configs and, for the scheduler, the
prediction type (``parameterization: "v"``), which is what tells an SD 2.x 512 epsilon
model from a 768 v-prediction one: both have the same keys and shapes.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from easel.shared.errors import ModelLoadError, cannot_load
from easel.shared.families import FamilyName, get_family
from easel.shared.models import JobType
from easel.shared.registry import ModelSpec
from easel.shared.weights_header import UnreadableWeights, WeightsHeader, read_header

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "single_file_configs"
"""The shipped config folders, one per architecture, and the CLIP BPE merges."""

CLIP_BPE = SHIPPED_CONFIGS / "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
CLIP_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48894 merges after the 512 byte tokens, before 2 specials
CONFIGS_FORMAT = "1"  # bump when materialise changes what it writes: a new cache folder results

LDM_UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SD1_KEY = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"  # diffusers' "v1" key
UNKNOWN_UNET = "unknown"  # an LDM UNet that is none of diffusers' types (it says "v1")


@dataclass(frozen=True)
class Architecture:
    """A checkpoint architecture Easel ships the configs of."""

    name: str  # diffusers' model type (infer_diffusers_model_type)
    title: str
    family: FamilyName
    pipeline_index: int  # into the family's pipelines: 0 text-to-image, 1 img2img, 2 inpaint
    hub_repo: str  # the repository whose configs are shipped (DIFFUSERS_DEFAULT_PIPELINE_PATHS)

    @property
    def pipeline(self) -> str:
        """The diffusers class whose ``from_single_file`` loads it."""
        return get_family(self.family).pipelines[self.pipeline_index]

    @property
    def inpainting(self) -> bool:
        return self.pipeline_index == 2

    @property
    def refiner(self) -> bool:
        return self.pipeline_index == 1


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            "v1", "Stable Diffusion 1.x", FamilyName.SD, 0, "stable-diffusion-v1-5/stable-diffusion-v1-5"
        ),
        Architecture(
            "inpainting",
            "Stable Diffusion 1.x inpainting",
            FamilyName.SD,
            2,
            "stable-diffusion-v1-5/stable-diffusion-inpainting",
        ),
        Architecture("v2", "Stable Diffusion 2.x", FamilyName.SD, 0, "stabilityai/stable-diffusion-2-1"),
        Architecture(
            "inpainting_v2",
            "Stable Diffusion 2.x inpainting",
            FamilyName.SD,
            2,
            "stabilityai/stable-diffusion-2-inpainting",
        ),
        Architecture(
            "xl_base", "Stable Diffusion XL", FamilyName.SDXL, 0, "stabilityai/stable-diffusion-xl-base-1.0"
        ),
        Architecture(
            "xl_refiner",
            "Stable Diffusion XL refiner",
            FamilyName.SDXL,
            1,
            "stabilityai/stable-diffusion-xl-refiner-1.0",
        ),
        Architecture(
            "xl_inpaint",
            "Stable Diffusion XL inpainting",
            FamilyName.SDXL,
            2,
            "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        ),
    )
}

_OTHERS = {  # what diffusers' other model types are, for the error message
    "sd3": "Stable Diffusion 3",
    "sd35_large": "Stable Diffusion 3.5 Large",
    "sd35_medium": "Stable Diffusion 3.5 Medium",
    "flux-dev": "Flux.1 dev",
    "flux-schnell": "Flux.1 schnell",
    "flux-fill": "Flux.1 Fill",
    "flux-depth": "Flux.1 Depth",
    "playground-v2-5": "Playground v2.5",
    "upscale": "Stable Diffusion x4 upscaler",
    "instruct-pix2pix": "InstructPix2Pix",
}


@dataclass(frozen=True)
class Detection:
    """What a checkpoint file is: diffusers' model type of it (``None`` when its keys hold
    no LDM UNet at all) and the shipped architecture, when Easel has one."""

    model_type: str | None
    architecture: Architecture | None

    def describe(self) -> str:
        if self.architecture is not None:
            return f"{self.architecture.title} ({self.architecture.name!r})"
        if self.model_type is None:
            return "no Stable Diffusion checkpoint Easel recognises (no LDM UNet keys)"
        if self.model_type == UNKNOWN_UNET:
            return "an LDM UNet of no architecture Easel recognises (diffusers would guess 'v1')"
        what = _OTHERS.get(self.model_type) or (
            "Stable Cascade" if self.model_type.startswith("stable_cascade") else self.model_type
        )
        return f"a {what} checkpoint (diffusers' type {self.model_type!r})"


@dataclass(frozen=True)
class _Shape:
    """What ``infer_diffusers_model_type`` reads of a tensor."""

    shape: tuple[int, ...]


def detect(header: WeightsHeader) -> Detection:
    """The architecture of the checkpoint whose header is ``header``, as diffusers'
    ``infer_diffusers_model_type`` names it (fed the header's shapes, no weights).

    diffusers answers ``"v1"`` for anything it does not recognise; here ``"v1"`` counts
    only when the file has SD 1.x's UNet key, and a file without the LDM UNet's first
    convolution is no model type at all.
    """
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    shapes = {key: _Shape(info.shape) for key, info in header.tensors.items()}
    try:
        model_type: str | None = infer_diffusers_model_type(shapes)
    except Exception:  # a branch that reads values, or a key it expects missing
        model_type = None
    if model_type == "v1" and SD1_KEY not in shapes:
        model_type = None if LDM_UNET_KEY not in shapes else UNKNOWN_UNET
    architecture = ARCHITECTURES.get(model_type) if model_type else None
    return Detection(model_type, architecture)


# --- configs: shipped, materialised with tokenizers ---------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map of bytes to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], tuple[str, ...]]:
    """CLIP's tokenizer vocabulary (49408 tokens) and BPE merges, built from OpenAI's
    ``bpe_simple_vocab_16e6.txt.gz`` as its ``SimpleTokenizer`` builds them: the 256 byte
    characters, the same with ``</w>``, one token per merge, then ``<|startoftext|>``
    (49406) and ``<|endoftext|>`` (49407)."""
    lines = gzip.decompress(CLIP_BPE.read_bytes()).decode("utf-8").split("\n")
    merges = tuple(lines[1 : 1 + CLIP_MERGES])  # the first line is the file's own header
    alphabet = list(_bytes_to_unicode().values())
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *(m.replace(" ", "") for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE or len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{CLIP_BPE.name}: built {len(vocab)} tokens, not CLIP's {CLIP_VOCAB_SIZE}")
    return vocab, merges


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` of CLIP's BPE into ``folder`` (as Hugging
    Face's CLIP tokenizers keep them)."""
    vocab, merges = clip_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _shipped_files(name: str) -> Iterator[Path]:
    folder = SHIPPED_CONFIGS / name
    if not (folder / "model_index.json").is_file():
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"no shipped single-file configs for architecture {name!r} (shipped: {known})")
    yield from sorted(p for p in folder.rglob("*") if p.is_file())


def _digest(name: str) -> str:
    digest = hashlib.sha256(CONFIGS_FORMAT.encode())
    for path in (*_shipped_files(name), CLIP_BPE):
        digest.update(str(path.relative_to(SHIPPED_CONFIGS)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def materialize_configs(name: str, cache_dir: Path) -> Path:
    """A complete diffusers config folder (no weights) for architecture ``name`` under
    ``cache_dir``: the shipped configs plus each tokenizer's ``vocab.json`` and
    ``merges.txt``. Built once; its folder name carries a digest of what it was built
    from, so a changed package builds a new one. Safe when several processes build it at
    once (each builds aside and renames; the first complete folder wins)."""
    target = cache_dir / f"{name}-{_digest(name)}"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        source = SHIPPED_CONFIGS / name
        for path in _shipped_files(name):
            out = staging / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
        for tokenizer in staging.glob("tokenizer*"):
            write_clip_tokenizer_files(tokenizer)
        try:
            os.rename(staging, target)  # whole or not at all
        except OSError:
            if not (target / "model_index.json").is_file():  # not another process's copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_configs_dir() -> Path:
    """Where the worker materialises config folders: ``.single-file-configs`` in the
    settings' folder of models Easel builds itself (``$EASEL_HOME/models``)."""
    from easel.shared.settings import get_settings

    return get_settings().built_models_dir / ".single-file-configs"


# --- loading ----------------------------------------------------------------------------


def original_config_beside(checkpoint: Path) -> Path | None:
    """A1111's original-config ``.yaml`` next to ``checkpoint`` (same stem), if any."""
    for suffix in (".yaml", ".yml"):
        candidate = checkpoint.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def prediction_type_of(original_config: Mapping[str, Any]) -> str:
    """``v_prediction`` or ``epsilon``, as an original LDM / SGM config says: LDM's
    ``parameterization: "v"``, or SGM's ``VScaling`` denoiser (SDXL-v configs)."""
    params = original_config.get("model", {}).get("params", {}) or {}
    if params.get("parameterization") == "v":
        return "v_prediction"
    scaling = (params.get("denoiser_config", {}) or {}).get("params", {}).get("scaling_config", {}) or {}
    if "VScaling" in str(scaling.get("target", "")):
        return "v_prediction"
    return "epsilon"


def _how_to_declare(spec: ModelSpec, detection: Detection) -> str:
    if detection.model_type and detection.model_type.startswith(("sd3", "sd35", "flux")):
        return (
            'serve it as a diffusers folder (source = "directory") or a Hub id: Easel does not load '
            "SD3 or Flux from one file"
        )
    return (
        f"declare it in model {spec.name!r}'s table: config = \"<a local diffusers folder of the same "
        'architecture>" beside source = "single_file", or convert it and serve the folder '
        '(source = "directory")'
    )


def _public(spec: ModelSpec) -> str:
    """What the job's owner is told when ``spec``'s file cannot be served (the detail,
    with the file's name and what to change in the models file, is the operator's)."""
    return cannot_load("model", spec.name, "choose another model (GET /api/v1/models) or try again later")


def plan_single_file(spec: ModelSpec, configs_dir: Path | None = None) -> tuple[str, str, Path | None]:
    """What ``load_single_file`` loads for ``spec``: the pipeline class name, the config
    folder and the original-config ``.yaml`` (or ``None``). Reads the file's header only;
    ``ModelLoadError`` naming what was detected when the file cannot be served as declared."""
    path = Path(spec.location)
    try:
        detection = detect(read_header(path))
    except UnreadableWeights as exc:
        raise ModelLoadError(str(exc), _public(spec)) from exc
    arch = detection.architecture
    family = spec.family_info
    if arch is not None and arch.family is not spec.family:
        raise ModelLoadError(
            f"{path.name} holds {detection.describe()}, which is the "
            f"{get_family(arch.family).describe()} family, but the model is declared "
            f"{family.describe()}; fix family in model {spec.name!r}'s table (or remove it: a single "
            "file's family is read from its header)",
            _public(spec),
        )
    if arch is not None and arch.inpainting and not spec.inpainting:
        raise ModelLoadError(
            f"{path.name} holds {detection.describe()}, a dedicated inpainting checkpoint (9-channel "
            f'UNet); set inpainting = true and types = ["inpaint"] in model {spec.name!r}\'s table',
            _public(spec),
        )
    if arch is not None and arch.refiner and JobType.TXT2IMG in spec.types:
        raise ModelLoadError(
            f"{path.name} holds {detection.describe()}, which refines pictures and cannot draw from "
            f'text; set types = ["img2img"] in model {spec.name!r}\'s table',
            _public(spec),
        )
    inpaint = spec.inpainting or (arch is not None and arch.inpainting)
    if arch is not None:
        pipeline = family.pipelines[2] if inpaint else arch.pipeline
    else:
        pipeline = family.pipelines[2] if inpaint else (family.single_file_pipeline or family.pipelines[0])
    if spec.config:
        config = Path(spec.config)
    elif arch is None:
        raise ModelLoadError(
            f"{path.name} holds {detection.describe()}; Easel ships the configs of "
            f"{', '.join(a.title for a in ARCHITECTURES.values())} only, so "
            f"{_how_to_declare(spec, detection)}",
            _public(spec),
        )
    else:
        config = materialize_configs(arch.name, configs_dir or default_configs_dir())
    return pipeline, str(config), original_config_beside(path)


def load_single_file(
    spec: ModelSpec, dtype: Any, offline: bool = True, configs_dir: Path | None = None
) -> Any:
    """The pipeline of single-file model ``spec`` in ``dtype`` (a torch dtype), loaded by
    diffusers' ``from_single_file`` with ``spec.config`` or the shipped configs of the
    detected architecture; offline, and always with a local config folder, nothing is
    fetched. An original-config ``.yaml`` beside the file is honoured (see the module)."""
    import diffusers
    from diffusers.loaders.single_file_utils import fetch_original_config

    pipeline_name, config, yaml_path = plan_single_file(spec, configs_dir)
    local_config = Path(config).is_dir()
    local_only = offline or local_config
    pipeline_class = getattr(diffusers, pipeline_name)
    kwargs: dict[str, Any] = {}
    accepted = inspect.signature(pipeline_class.__init__).parameters
    for unused in ("safety_checker", "feature_extractor"):  # Easel runs no safety checker
        if unused in accepted:
            kwargs[unused] = None
    if "requires_safety_checker" in accepted:
        kwargs["requires_safety_checker"] = False
    if yaml_path is not None:
        kwargs["original_config"] = str(yaml_path)  # a local file: diffusers reads it, fetches nothing
        if local_config:
            original = fetch_original_config(str(yaml_path), local_files_only=True)
            kwargs["scheduler"] = _scheduler(Path(config), prediction_type_of(original))
    return pipeline_class.from_single_file(
        spec.location, config=config, dtype=dtype, local_files_only=local_only, **kwargs
    )


def _scheduler(config: Path, prediction_type: str) -> Any:
    """The config folder's scheduler with ``prediction_type`` (from the original config)."""
    import diffusers

    class_name = json.loads((config / "model_index.json").read_text())["scheduler"][1]
    return getattr(diffusers, class_name).from_pretrained(
        str(config), subfolder="scheduler", local_files_only=True, prediction_type=prediction_type
    )
