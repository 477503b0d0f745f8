"""LoRA adapters, ControlNets, VAEs and textual-inversion embeddings on a worker:
loaded once per model, kept warm, and activated per pipeline call (docs/models.md).

A model's LoRAs load into its shared UNet / text encoders under their registry names
(``load_lora_weights(..., adapter_name=name)``), at most ``max_loaded`` of them (least
recently used deleted first). Its ControlNets load once (``ControlNetModel``) and their
pipelines are made with ``from_pipe``, so the base weights are shared. A VAE loads once
per model (``load_vae``) and its jobs run a pipeline that shares every other module
with the model's (``with_components``): the cached pipelines keep their own VAE.
Embeddings load into the model's tokenizer(s) and text encoder(s) once, under private
tokens that only prompts naming them get (``load_embeddings``, ``embedding_prompt``).
All of them count in the model's weight bytes (``ModelPipelines.bytes``), which the
pipeline cache's budget sees. ``lora_scope`` sets a call's adapters and weights before
the call and switches LoRA off after it: the worker runs one call at a time, and no
call sees another's.
"""

from __future__ import annotations

import logging
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from easel.shared.adapters import (
    ControlNetSpec,
    EmbeddingSpec,
    LoraRef,
    Target,
    VaeSpec,
    mentioned_embeddings,
    replace_embeddings,
)
from easel.shared.errors import ModelLoadError, cannot_load
from easel.shared.kinds import kind_of
from easel.shared.models import JobType
from easel.shared.params import GenerationParams
from easel.shared.registry import Registry

log = logging.getLogger(__name__)

# What a job's owner is told (ModelLoadError.public): the adapter by name and what to do.
NOT_HERE = "the worker that ran the job does not have it; see the adapters of GET /api/v1/models"
WITHOUT_IT = "submit without it or choose another (GET /api/v1/models lists the adapters)"

CANNY_LOW, CANNY_HIGH = 100, 200


@dataclass
class _ModelAdapters:
    """What one loaded model carries besides its own weights."""

    loras: OrderedDict[str, None] = field(default_factory=OrderedDict)
    controlnets: dict[str, Any] = field(default_factory=dict)
    control_pipes: dict[tuple[str, str], Any] = field(default_factory=dict)
    vaes: dict[str, Any] = field(default_factory=dict)
    vae_pipes: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    """(job type, ControlNet or "", VAE) -> the pipeline with that VAE."""
    embeddings: dict[str, str] = field(default_factory=dict)
    """Loaded embedding -> the text of private tokens that stands for it in a prompt."""
    embedding_loads: int = 0  # numbers the private tokens, failed loads too


_STATE: weakref.WeakKeyDictionary[Any, _ModelAdapters] = weakref.WeakKeyDictionary()
_WORDS: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
"""A tokenizer -> the embeddings loaded into it and their private tokens: what
``embedding_prompt`` replaces in the prompts of any pipeline that uses the tokenizer."""


def _state(pipelines: Any) -> _ModelAdapters:
    if pipelines not in _STATE:
        _STATE[pipelines] = _ModelAdapters()
    return _STATE[pipelines]


def pipeline_for(pipelines: Any, params: GenerationParams, registry: Registry, max_loaded: int = 8) -> Any:
    """The pipeline for ``params``: its job type's, with its ControlNet if it has one,
    its VAE if it names one, and its LoRAs loaded (activated per call by ``lora_scope``).
    ``ModelLoadError`` when an adapter cannot be loaded; the model itself stays usable."""
    pipe = pipelines.for_type(params.type)
    if params.loras:
        _load_loras(pipelines, params.loras, registry, max_loaded)
    if params.control is not None:
        spec = registry.controlnets.get(params.control.model)
        if spec is None:
            raise ModelLoadError(
                f"ControlNet {params.control.model!r} is not in this worker's models file",
                cannot_load("ControlNet", params.control.model, NOT_HERE),
            )
        pipe = _control_pipe(pipelines, pipe, params.type, spec)
    if params.vae is not None:
        vae = registry.vaes.get(params.vae)
        if vae is None:
            raise ModelLoadError(
                f"VAE {params.vae!r} is not in this worker's registry",
                cannot_load("VAE", params.vae, NOT_HERE),
            )
        key = (JobType(params.type).value, params.control.model if params.control else "", vae.name)
        pipe = _vae_pipe(pipelines, pipe, key, vae)
    return pipe


def _load_loras(pipelines: Any, refs: Sequence[LoraRef], registry: Registry, max_loaded: int) -> None:
    state, base = _state(pipelines), pipelines.base
    for ref in refs:
        if ref.name in state.loras:
            state.loras.move_to_end(ref.name)
            continue
        spec = registry.loras.get(ref.name)
        if spec is None:
            raise ModelLoadError(
                f"LoRA {ref.name!r} is not in this worker's models file",
                cannot_load("LoRA", ref.name, NOT_HERE),
            )
        wanted = {r.name for r in refs}
        while len(state.loras) >= max_loaded and set(state.loras) - wanted:
            old = next(name for name in state.loras if name not in wanted)
            base.delete_adapters(old)
            del state.loras[old]
            log.info("unloaded LoRA %s from model %s", old, pipelines.spec.name)
        try:
            base.load_lora_weights(lora_weights(spec.location), adapter_name=ref.name)
            if ref.name not in {n for names in base.get_list_adapters().values() for n in names}:
                raise ValueError("no weight in the file matched a layer of the model")  # a silent no-op
        except Exception as exc:
            _forget_partial(base, ref.name)
            raise ModelLoadError(
                f"cannot load LoRA {ref.name!r} from {spec.location!r}: {exc}",
                cannot_load("LoRA", ref.name, WITHOUT_IT),
            ) from exc
        state.loras[ref.name] = None
        _recount(pipelines)
        log.info("loaded LoRA %s into model %s", ref.name, pipelines.spec.name)


PEFT_PREFIX = "base_model.model."


def lora_weights(location: str) -> Any:
    """What ``load_lora_weights`` should read for the LoRA at ``location``: the path itself,
    or, for a file saved by PEFT (``base_model.model.<module>...``, which diffusers would
    load as nothing at all), its weights renamed as diffusers names them (``unet.`` or
    ``text_encoder.``)."""
    path = Path(location)
    if path.suffix != ".safetensors" or not path.is_file():
        return location
    from easel.shared.weights_header import read_header

    if not any(key.startswith(PEFT_PREFIX) for key in read_header(path).tensors):
        return location
    from safetensors.torch import load_file

    renamed = {}
    for key, tensor in load_file(str(path)).items():
        module = key.removeprefix(PEFT_PREFIX)
        owner = "text_encoder." if module.startswith("text_model.") else "unet."
        renamed[owner + module] = tensor
    return renamed


def _forget_partial(base: Any, name: str) -> None:
    """Remove what a failed load left under ``name`` (if anything)."""
    try:
        if name in {n for names in base.get_list_adapters().values() for n in names}:
            base.delete_adapters(name)
    except Exception:  # nothing was loaded, or PEFT state is absent
        log.debug("nothing to remove after a failed load of LoRA %s", name)


def _load_controlnet(location: str, base: Any) -> Any:
    """A ControlNet from a diffusers folder (or Hub id), or from one file in the original
    layout (``control_model.*``, as A1111's ``models/ControlNet`` holds them): read with
    ``from_single_file`` and the config of a ControlNet shaped like the model's own UNet
    (``ControlNetModel.from_unet``), so nothing is fetched."""
    from diffusers import ControlNetModel

    if not Path(location).is_file():
        return ControlNetModel.from_pretrained(location, dtype=base.dtype)
    from accelerate import init_empty_weights

    with init_empty_weights():  # only its config is wanted: no memory for its weights
        shaped = ControlNetModel.from_unet(base.unet, load_weights_from_unet=False, **_hint_shape(location))
    with tempfile.TemporaryDirectory(prefix="easel-controlnet-config-") as config:
        shaped.save_config(config)
        return ControlNetModel.from_single_file(location, config=config, local_files_only=True).to(base.dtype)


def _hint_shape(location: str) -> dict[str, Any]:
    """The hint encoder's channels of a single-file ControlNet, from its header: the
    convolutions ``input_hint_block.0, 2, 4, ...`` (the last is the output's); each pair
    after the first widens to the next of ``conditioning_embedding_out_channels``."""
    from easel.shared.weights_header import read_header

    convs = sorted(
        (int(key.split(".")[-2]), info.shape)
        for key, info in read_header(Path(location)).tensors.items()
        if key.removeprefix("control_model.").startswith("input_hint_block.") and key.endswith(".weight")
    )
    if len(convs) < 3:
        return {}
    first, blocks = convs[0][1], [shape for _, shape in convs[1:-1]]
    channels = (first[0], *(shape[0] for shape in blocks[1::2]))
    return {"conditioning_embedding_out_channels": channels, "conditioning_channels": first[1]}


def _control_pipe(pipelines: Any, pipe: Any, job_type: JobType, spec: ControlNetSpec) -> Any:
    state = _state(pipelines)
    key = (JobType(job_type).value, spec.name)
    if key in state.control_pipes:
        return state.control_pipes[key]
    if spec.name not in state.controlnets:
        try:
            model = _load_controlnet(spec.location, pipelines.base)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load ControlNet {spec.name!r} from {spec.location!r}: {exc}",
                cannot_load("ControlNet", spec.name, WITHOUT_IT),
            ) from exc
        state.controlnets[spec.name] = model.to(pipelines.base.device)
        _recount(pipelines)
    from easel.worker.engine.pipelines import auto_pipeline  # pipelines imports this module

    auto = auto_pipeline(job_type)
    try:
        control_pipe = auto.from_pipe(pipe, controlnet=state.controlnets[spec.name], dtype=pipe.dtype)
    except Exception as exc:
        raise ModelLoadError(
            f"ControlNet {spec.name!r} cannot drive model {pipelines.spec.name!r}: {exc}",
            cannot_load(
                "ControlNet", spec.name, f"it does not fit model {pipelines.spec.name!r}; {WITHOUT_IT}"
            ),
        ) from exc
    control_pipe.set_progress_bar_config(disable=True)
    state.control_pipes[key] = control_pipe
    return control_pipe


def _vae_pipe(pipelines: Any, pipe: Any, key: tuple[str, str, str], spec: VaeSpec) -> Any:
    """``pipe`` with ``spec``'s VAE instead of the model's: a pipeline of its own that
    shares every other module (made once per job type, ControlNet and VAE)."""
    state = _state(pipelines)
    if key in state.vae_pipes:
        return state.vae_pipes[key]
    if spec.name not in state.vaes:
        state.vaes[spec.name] = load_vae(spec, pipelines.base.vae)
        _recount(pipelines)
        log.info("loaded VAE %s for model %s", spec.name, pipelines.spec.name)
    from easel.worker.engine.generate import with_components

    view = with_components(pipe, vae=state.vaes[spec.name])
    view.set_progress_bar_config(disable=True)
    state.vae_pipes[key] = view
    return view


VAE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
"""Single-file VAEs in the original (LDM) key layout; anything else must be a folder."""
_LACKS = "the file lacks weights of the model's VAE (a partial file, or a VAE of another architecture)"


def load_vae(spec: VaeSpec, own: Any) -> Any:
    """The ``AutoencoderKL`` of ``spec``, made like the model's ``own`` VAE: a single file
    in the original layout (read with ``from_single_file`` and the own VAE's config, so
    nothing is fetched) or a diffusers folder (``config.json``, or a pipeline folder's
    ``vae/``); the own VAE's dtype, device, attention and memory format. ``ModelLoadError``
    naming the VAE and the file when it cannot be read or does not fit the model's VAE."""
    import torch
    from diffusers import AutoencoderKL

    from easel.worker.engine.fastpath import FastPathPlan, apply_fast_path

    location = Path(spec.location)
    try:
        if not isinstance(own, AutoencoderKL):
            raise ValueError(
                f"the model's VAE is a {type(own).__name__}; a VAE file replaces an AutoencoderKL"
            )
        if location.is_dir():
            nested = not (location / "config.json").is_file() and (location / "vae" / "config.json").is_file()
            vae = AutoencoderKL.from_pretrained(
                str(location), subfolder="vae" if nested else None, local_files_only=True
            )
        elif location.is_file():
            if location.suffix.lower() not in VAE_FILE_SUFFIXES:
                raise ValueError(f"not a VAE file ({', '.join(VAE_FILE_SUFFIXES)}) or a diffusers folder")
            with tempfile.TemporaryDirectory(prefix="easel-vae-config-") as config:
                own.save_config(config)  # the model's own VAE geometry and scaling: read offline
                try:
                    vae = AutoencoderKL.from_single_file(str(location), config=config, local_files_only=True)
                except NotImplementedError as exc:  # weights left on the meta device: not in the file
                    if "meta tensor" not in str(exc):
                        raise
                    raise ValueError(_LACKS) from exc
        else:
            raise FileNotFoundError("no such file or folder")
        if any(p.device.type == "meta" for p in vae.parameters()):
            raise ValueError(_LACKS)
        vae = vae.to(device=own.device, dtype=own.dtype).eval()
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load VAE {spec.name!r} from {spec.location!r}: {exc}",
            cannot_load("VAE", spec.name, WITHOUT_IT),
        ) from exc
    weight = own.encoder.conv_in.weight
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    apply_fast_path(_VaeOnly(vae), FastPathPlan(sdpa=True, channels_last=channels_last))
    return vae


@dataclass
class _VaeOnly:
    """A VAE where ``apply_fast_path`` looks for a pipeline's modules."""

    vae: Any
    unet: Any = None


def load_embeddings(pipelines: Any, texts: Sequence[str], registry: Registry) -> list[str]:
    """Load the registry's embeddings that fit this model and that ``texts`` name as words
    (``easel.shared.adapters.mentioned_embeddings``), once per model; their names.
    ``ModelLoadError`` naming the one that cannot be loaded (the model stays usable)."""
    spec = pipelines.spec
    target = Target(spec.name, str(spec.family), getattr(spec, "architecture", None))
    fitting = {name: e for name, e in registry.embeddings.items() if target.takes(e)}
    names = list(dict.fromkeys(name for text in texts for name in mentioned_embeddings(text, fitting)))
    state = _state(pipelines)
    for name in names:
        if name not in state.embeddings:
            state.embedding_loads += 1
            words = _load_embedding(pipelines.base, fitting[name], state.embedding_loads)
            state.embeddings[name] = words
            _WORDS.setdefault(pipelines.base.tokenizer, {})[name] = words
            _recount(pipelines)
            log.info("loaded embedding %s into model %s", name, pipelines.spec.name)
    return names


def loaded_embeddings(pipelines: Any) -> list[str]:
    """The embeddings loaded into a model, in load order."""
    return list(_state(pipelines).embeddings)


def embedding_prompt(pipe: Any, text: str) -> str:
    """``text`` with each embedding loaded into ``pipe``'s tokenizer that it names as a
    word replaced by that embedding's private tokens; other words as they are."""
    tokenizer = getattr(pipe, "tokenizer", None)
    words = _WORDS.get(tokenizer) if tokenizer is not None else None
    return replace_embeddings(text, words) if words else text


def _load_embedding(base: Any, spec: EmbeddingSpec, number: int) -> str:
    """Load ``spec`` into ``base``'s text encoder(s) as ``<easel-ti-NUMBER-K>`` tokens, one
    per vector (for SDXL, the ``clip_l`` vectors into the first encoder and the ``clip_g``
    ones into the second, under the same tokens); the prompt text that stands for it."""
    try:
        vectors = read_embedding(Path(spec.location))
        encoders = [("tokenizer", "text_encoder")]
        if getattr(base, "text_encoder_2", None) is not None:
            encoders.append(("tokenizer_2", "text_encoder_2"))
        wanted = ["clip_l", "clip_g"] if len(encoders) == 2 else ["*"]
        if sorted(vectors) != sorted(wanted):
            raise ValueError(
                f"it holds {', '.join(sorted(vectors))} vectors; a model with {len(encoders)} "
                f"text encoder(s) takes {' and '.join(wanted)}"
            )
        counts = {len(vectors[key]) for key in wanted}
        if len(counts) != 1:
            raise ValueError("its clip_l and clip_g vectors differ in number")
        tokens = [f"<easel-ti-{number}-{k}>" for k in range(counts.pop())]
        for key, (tokenizer_name, encoder_name) in zip(wanted, encoders, strict=True):
            encoder = getattr(base, encoder_name)
            width = encoder.get_input_embeddings().weight.shape[-1]
            if vectors[key].shape[-1] != width:
                raise ValueError(
                    f"its vectors have {vectors[key].shape[-1]} values; {encoder_name} takes {width}"
                )
            base.load_textual_inversion(
                list(vectors[key]),
                token=tokens,
                tokenizer=getattr(base, tokenizer_name),
                text_encoder=encoder,
            )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load embedding {spec.name!r} from {spec.location!r}: {exc}",
            cannot_load("embedding", spec.name, f"remove it from the prompt; {WITHOUT_IT}"),
        ) from exc
    return " ".join(tokens)


def read_embedding(path: Path) -> dict[str, Any]:
    """The vectors of a textual-inversion file, ``[n, width]`` each: ``{"*": ...}`` for one
    text encoder, ``{"clip_l": ..., "clip_g": ...}`` for SDXL. Formats: A1111's ``.pt``
    (``string_to_param``) and ``.safetensors`` (``emb_params``), SDXL's ``clip_l`` /
    ``clip_g``, diffusers' ``learned_embeds`` (one token: its vector)."""
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data: Any = load_file(str(path), device="cpu")
    else:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "string_to_param" in data:
        data = data["string_to_param"]
    if isinstance(data, torch.Tensor):
        found = {"*": data}
    elif isinstance(data, dict) and {"clip_l", "clip_g"} <= set(data):
        found = {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    elif isinstance(data, dict) and "emb_params" in data:
        found = {"*": data["emb_params"]}
    elif isinstance(data, dict) and len(data) == 1:
        found = {"*": next(iter(data.values()))}
    else:
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a textual-inversion embedding (found {keys})")
    vectors = {}
    for key, value in found.items():
        if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2) or value.numel() == 0:
            raise ValueError(f"its {key} entry is not a vector or a matrix of vectors")
        vectors[key] = (value if value.dim() == 2 else value[None]).detach().float()
    return vectors


def _recount(pipelines: Any) -> None:
    """The model's weight bytes with its adapters, for the cache's budget."""
    from easel.worker.engine.pipelines import weight_bytes

    state = _state(pipelines)
    extra = sum(
        sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
        for m in (*state.controlnets.values(), *state.vaes.values())
    )
    pipelines.bytes = weight_bytes(pipelines.base) + extra


def loaded_loras(pipelines: Any) -> list[str]:
    """The LoRAs loaded into a model, least recently used first."""
    return list(_state(pipelines).loras)


@contextmanager
def lora_scope(pipe: Any, loras: Sequence[LoraRef]) -> Iterator[None]:
    """Within: ``loras`` active with their weights (LoRA off when there are none);
    after: LoRA off again."""
    loaded = _has_adapters(pipe)
    if loras:
        pipe.enable_lora()
        pipe.set_adapters([r.name for r in loras], adapter_weights=[r.weight for r in loras])
    elif loaded:
        pipe.disable_lora()
    try:
        yield
    finally:
        if loras or loaded:
            pipe.disable_lora()


def _has_adapters(pipe: Any) -> bool:
    getter = getattr(pipe, "get_list_adapters", None)
    if getter is None:
        return False
    try:
        return any(getter().values())
    except Exception:  # no PEFT state on this pipeline's modules
        return False


def control_kwargs(job_type: JobType, images: Sequence[Image.Image | None], scale: float) -> dict[str, Any]:
    """The ControlNet arguments of a pipeline call: the control images under the kind's
    ``control_argument`` (txt2img: ``image``; img2img and inpaint: ``control_image``)."""
    return {kind_of(job_type).control_argument: list(images), "controlnet_conditioning_scale": scale}


def prepare_control(image: Image.Image, preprocessor: str) -> Image.Image:
    """The control map of ``image``: itself (``none``) or its Canny edges (OpenCV)."""
    image = image.convert("RGB")
    if preprocessor == "none":
        return image
    if preprocessor == "canny":
        import cv2
        import numpy as np

        edges = cv2.Canny(np.asarray(image), CANNY_LOW, CANNY_HIGH)
        return Image.fromarray(np.stack([edges] * 3, axis=-1))
    raise ValueError(f"unknown ControlNet preprocessor {preprocessor!r}")
