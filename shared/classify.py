"""What a weights file is, from its tensor names and shapes alone (``read_header``): a
checkpoint of which architecture, a LoRA for which base model, a textual-inversion
embedding, a VAE, a ControlNet or a text encoder. No weight is read; this module imports
neither torch nor diffusers (the web tier uses it, docs/design.md principle 3). Upscaler
models (``Kind.UPSCALER``) are not told by their keys: their folder says what they are
(``easel.shared.catalog``), and spandrel reads their architecture on the worker.

Checkpoint architectures are named as diffusers' ``infer_diffusers_model_type`` names
them (``diffusers/loaders/single_file_utils.py``), by the same keys and shapes in the same
order, so that what the catalog says a file is matches what ``from_single_file`` will load
it as. Two departures, both where diffusers guesses rather than reads:

- a file with none of the known keys is ``None`` here (diffusers falls back to ``"v1"``);
  ``"v1"`` needs the SD 1.x UNet's twelfth output block;
- a UNet without text encoders (ComfyUI's ``diffusion_models/``), prefixed or not, is
  read by its own keys: its ``label_emb`` width tells SDXL base (2816) from the refiner
  (2560), where diffusers would call such a file ``"v1"`` (it looks for SDXL's text
  encoders).

Adapters are matched to checkpoints by ``base``: the tensor shapes they were trained
against (``"sd1"``: SD 1.x, cross-attention 768; ``"sd2"``: 1024; ``"sdxl"``: 2048;
``"sdxl-refiner"``: 1280; ``"sd3-medium"``, ``"sd3.5-medium"``, ``"sd3.5-large"``;
``"flux"``). An SD 2.x LoRA does not fit an SD 1.x model although both are family
``sd``. Files whose base cannot be told (a VAE's latent channels fit SD and SDXL alike)
list the ``families`` they fit instead; ``fits`` applies both rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from easel.shared.families import FamilyName
from easel.shared.weights_header import WeightsHeader


class Kind(StrEnum):
    """What a model file or folder is."""

    CHECKPOINT = "checkpoint"  # a single-file checkpoint (or a bare UNet / transformer)
    DIFFUSERS = "diffusers"  # a diffusers pipeline folder (model_index.json)
    LORA = "lora"
    VAE = "vae"
    EMBEDDING = "embedding"  # textual inversion
    CONTROLNET = "controlnet"
    TEXT_ENCODER = "text_encoder"  # CLIP-L, CLIP-G, T5-XXL files of a split SD3/Flux layout
    UPSCALER = "upscaler"  # ESRGAN, SwinIR, ... (spandrel): told by its folder, never by its keys


@dataclass(frozen=True)
class Classification:
    """What a file's keys and shapes say it is. ``problem`` says why Easel cannot serve
    it although it was recognised (``kind`` set), or why it was not (``kind`` None)."""

    kind: Kind | None
    architecture: str | None = None
    family: FamilyName | None = None
    families: tuple[FamilyName, ...] = ()
    """Every family it fits: ``(family,)`` when the family is known, more for files
    that fit several (a 4-channel VAE: sd and sdxl)."""
    base: str | None = None
    format: str | None = None
    components: tuple[str, ...] = ()
    """Checkpoints: the diffusers pipeline components the file holds (``unet`` or
    ``transformer``, ``vae``, ``text_encoder``, ``text_encoder_2``, ``text_encoder_3``)."""
    vectors: int | None = None
    """Embeddings: the number of vectors (tokens) the name stands for."""
    latent_channels: int | None = None
    """VAEs: the latent channels (4: SD/SDXL, 16: SD3/Flux)."""
    prediction: str | None = None
    """``"v_prediction"`` when the file says so (a ``v_pred`` key); ``None`` when it does not."""
    problem: str | None = None


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


Tensors = Mapping[str, _Shaped]

# --- checkpoints: diffusers' CHECKPOINT_KEY_NAMES ----------------------------------------

UNET = "model.diffusion_model."
KEY_V1 = UNET + "output_blocks.11.0.skip_connection.weight"
KEY_V2 = UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
KEY_XL_BASE = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
KEY_XL_REFINER = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"
KEY_UPSCALE = UNET + "input_blocks.10.0.skip_connection.bias"
KEYS_CONTROLNET = ("control_model.time_embed.0.weight", "controlnet_cond_embedding.conv_in.weight")
KEY_CONTROLNET_XL = "add_embedding.linear_1.weight"
KEY_CONTROLNET_XL_LARGE = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight"
KEY_CONTROLNET_XL_MID = "down_blocks.1.attentions.0.norm.weight"
KEY_PLAYGROUND = "edm_mean"
KEY_IN_CONV = UNET + "input_blocks.0.0.weight"  # diffusers' "inpainting" and "instruct-pix2pix"
KEY_CASCADE_C = "clip_txt_mapper.weight"
KEY_CASCADE_B = "down_blocks.1.0.channelwise.0.weight"
_SD3_ADALN = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
KEYS_SD3 = (_SD3_ADALN, UNET + _SD3_ADALN)
KEYS_SD35_LARGE = ("joint_blocks.37.x_block.mlp.fc1.weight", UNET + "joint_blocks.37.x_block.mlp.fc1.weight")
KEY_ANIMATEDIFF = (
    "down_blocks.0.motion_modules.0.temporal_transformer."
    "transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
)
KEYS_FLUX2 = (UNET + "single_stream_modulation.lin.weight", "single_stream_modulation.lin.weight")
KEYS_FLUX3 = (UNET + "early_stream_modulations.image.lin.weight", "early_stream_modulations.image.lin.weight")
KEYS_CHROMA = (UNET + "distilled_guidance_layer.in_proj.bias", "distilled_guidance_layer.in_proj.bias")
_FLUX_NORM = "double_blocks.0.img_attn.norm.key_norm.scale"
KEYS_FLUX = (_FLUX_NORM, UNET + _FLUX_NORM)
KEYS_FLUX_GUIDANCE = ("guidance_in.in_layer.bias", UNET + "guidance_in.in_layer.bias")
KEY_SDXL_LABEL = UNET + "label_emb.0.0.weight"  # Easel's reading of a bare SDXL UNet

# Architectures diffusers names that no Easel family serves, each by one telltale key
# (diffusers' own), checked where diffusers checks them: named in the reason only.
_OTHER_ARCHITECTURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ltx-video", (UNET + "patchify_proj.weight", "patchify_proj.weight")),
    ("autoencoder-dc", ("decoder.stages.1.op_list.0.main.conv.conv.bias",)),
    ("mochi-1-preview", (UNET + "blocks.0.attn.qkv_x.weight", "blocks.0.attn.qkv_x.weight")),
    ("hunyuan-video", ("txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.bias",)),
    ("auraflow", ("double_layers.0.attn.w2q.weight",)),
    ("z-image-turbo", (UNET + "layers.0.adaLN_modulation.0.weight", "layers.0.adaLN_modulation.0.weight")),
    ("lumina2", (UNET + "cap_embedder.0.weight", "cap_embedder.0.weight")),
    ("sana", ("blocks.0.cross_attn.q_linear.weight",)),
    ("wan", (UNET + "head.modulation", "head.modulation")),
    ("qwen-image-2.1", (UNET + "txt_in.text_norm.weight", "txt_in.text_norm.weight")),
    ("hidream", ("double_stream_blocks.0.block.adaLN_modulation.1.bias",)),
)

FAMILY_OF_ARCHITECTURE: dict[str, FamilyName] = {
    "v1": FamilyName.SD,
    "v2": FamilyName.SD,
    "inpainting": FamilyName.SD,
    "inpainting_v2": FamilyName.SD,
    "xl_base": FamilyName.SDXL,
    "xl_refiner": FamilyName.SDXL,
    "xl_inpaint": FamilyName.SDXL,
    "playground-v2-5": FamilyName.SDXL,
    "sd3": FamilyName.SD3,
    "sd35_medium": FamilyName.SD3,
    "sd35_large": FamilyName.SD3,
    "flux-dev": FamilyName.FLUX,
    "flux-schnell": FamilyName.FLUX,
    "flux-fill": FamilyName.FLUX,
}
"""The checkpoint architectures Easel serves, and their family."""

BASE_OF_ARCHITECTURE: dict[str, str] = {
    "v1": "sd1",
    "inpainting": "sd1",
    "instruct-pix2pix": "sd1",
    "v2": "sd2",
    "inpainting_v2": "sd2",
    "xl_base": "sdxl",
    "xl_inpaint": "sdxl",
    "playground-v2-5": "sdxl",
    "xl_refiner": "sdxl-refiner",
    "sd3": "sd3-medium",
    "sd35_medium": "sd3.5-medium",
    "sd35_large": "sd3.5-large",
    "flux-dev": "flux",
    "flux-schnell": "flux",
    "flux-fill": "flux",
    "flux-depth": "flux",
}
"""The shapes adapters of each architecture are made for (see the module docstring)."""

_CROSS_ATTENTION = {768: "v1", 1024: "v2", 2048: "xl_base", 1280: "xl_refiner"}
_SD3_WIDTH = {1536: "sd3", 2432: "sd35_large"}


def _dim(tensors: Tensors, key: str, index: int) -> int | None:
    info = tensors.get(key)
    if info is None:
        return None
    shape = info.shape
    return shape[index] if -len(shape) <= index < len(shape) else None


def _any(tensors: Tensors, keys: tuple[str, ...]) -> bool:
    return any(key in tensors for key in keys)


class _Unprefixed(Mapping[str, _Shaped]):
    """A bare LDM UNet's tensors seen under ``model.diffusion_model.``."""

    def __init__(self, tensors: Tensors) -> None:
        self._tensors = tensors

    def __getitem__(self, key: str) -> _Shaped:
        if key.startswith(UNET):
            return self._tensors[key[len(UNET) :]]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:  # lookups only: the rules never iterate
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.startswith(UNET) and key[len(UNET) :] in self._tensors


def infer_architecture(tensors: Tensors) -> str | None:
    """The architecture ``infer_diffusers_model_type`` names for these tensors (any
    mapping of name -> object with a ``.shape``), or ``None`` where diffusers would
    guess ``"v1"`` without the keys of one; see the module docstring."""
    found = _diffusers_rules(tensors)
    if found is None and "input_blocks.0.0.weight" in tensors:
        found = _diffusers_rules(_Unprefixed(tensors))
    return found


def _diffusers_rules(t: Tensors) -> str | None:
    """diffusers' decision list, in its order, for the architectures Easel tells apart."""
    in_channels = _dim(t, KEY_IN_CONV, 1)
    if in_channels == 9:
        if _dim(t, KEY_V2, -1) == 1024:
            return "inpainting_v2"
        if KEY_XL_BASE in t or _dim(t, KEY_SDXL_LABEL, 1) == 2816:
            return "xl_inpaint"
        return "inpainting"
    if _dim(t, KEY_V2, -1) == 1024:
        return "v2"
    if KEY_PLAYGROUND in t:
        return "playground-v2-5"
    if KEY_XL_BASE in t:
        return "xl_base"
    if KEY_XL_REFINER in t:
        return "xl_refiner"
    if KEY_UPSCALE in t:
        return "upscale"
    if _any(t, KEYS_CONTROLNET):
        if KEY_CONTROLNET_XL in t:
            if KEY_CONTROLNET_XL_LARGE in t:
                return "controlnet_xl_large"
            return "controlnet_xl_mid" if KEY_CONTROLNET_XL_MID in t else "controlnet_xl_small"
        return "controlnet"
    cascade_c = _dim(t, KEY_CASCADE_C, 0)
    if cascade_c in (1536, 2048):
        return "stable_cascade_stage_c_lite" if cascade_c == 1536 else "stable_cascade_stage_c"
    cascade_b = _dim(t, KEY_CASCADE_B, -1)
    if cascade_b in (576, 640):
        return "stable_cascade_stage_b_lite" if cascade_b == 576 else "stable_cascade_stage_b"
    if any(_dim(t, key, -1) == 9216 for key in KEYS_SD3):
        key = UNET + "pos_embed" if UNET + "pos_embed" in t else "pos_embed"
        positions = _dim(t, key, 1)
        if positions == 36864:
            return "sd3"
        if positions == 147456:
            return "sd35_medium"
        return None  # diffusers fails here (an SD3 of no known size)
    if _any(t, KEYS_SD35_LARGE):
        return "sd35_large"
    if KEY_ANIMATEDIFF in t:
        return "animatediff"
    if _any(t, KEYS_FLUX2):
        return "flux-2-dev"
    if _any(t, KEYS_FLUX3):
        return "flux-3-image"
    if _any(t, KEYS_CHROMA):
        return "chroma"
    if _any(t, KEYS_FLUX):
        if not _any(t, KEYS_FLUX_GUIDANCE):
            return "flux-schnell"
        key = UNET + "img_in.weight" if UNET + "img_in.weight" in t else "img_in.weight"
        image_in = _dim(t, key, 1)
        return {384: "flux-fill", 128: "flux-depth"}.get(image_in or 0, "flux-dev")
    for name, keys in _OTHER_ARCHITECTURES:
        if _any(t, keys):
            return name
    if in_channels == 8:
        return "instruct-pix2pix"
    label = _dim(t, KEY_SDXL_LABEL, 1)  # a bare SDXL UNet (diffusers: "v1")
    if label in (2816, 2560):
        return "xl_base" if label == 2816 else "xl_refiner"
    return "v1" if KEY_V1 in t else None


def checkpoint_architecture(header: WeightsHeader) -> tuple[str | None, FamilyName | None]:
    """The checkpoint architecture as diffusers names it (``None``: not one it knows)
    and the Easel family that serves it (``None``: none does, e.g. ``"upscale"``)."""
    architecture = infer_architecture(header.tensors)
    return architecture, FAMILY_OF_ARCHITECTURE.get(architecture or "")


# --- components of a checkpoint ------------------------------------------------------------

_COMPONENT_KEYS: dict[str, tuple[str, ...]] = {
    "vae": ("first_stage_model.decoder.conv_in.weight", "vae.decoder.conv_in.weight"),
    "clip": (
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",  # SD 1.x
        "cond_stage_model.model.token_embedding.weight",  # SD 2.x (OpenCLIP-H)
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",  # SDXL CLIP-L
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight",  # SD3, Flux
    ),
    "clip_g": (
        "conditioner.embedders.1.model.token_embedding.weight",  # SDXL base
        "conditioner.embedders.0.model.token_embedding.weight",  # SDXL refiner
        "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight",  # SD3
    ),
    "t5": (
        "text_encoders.t5xxl.transformer.shared.weight",
        "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight",
    ),
}


def _components(t: Tensors, architecture: str, family: FamilyName | None) -> tuple[str, ...]:
    has = {name: _any(t, keys) for name, keys in _COMPONENT_KEYS.items()}
    unet = KEY_IN_CONV in t or "input_blocks.0.0.weight" in t
    found = ["unet" if unet else "transformer"]
    if has["vae"]:
        found.append("vae")
    if architecture == "xl_refiner":  # the refiner's only text encoder is diffusers' text_encoder_2
        encoders = ["text_encoder_2"] if has["clip_g"] else []
    else:
        second = has["t5"] if family is FamilyName.FLUX else has["clip_g"]
        encoders = [
            name for name, present in (("text_encoder", has["clip"]), ("text_encoder_2", second)) if present
        ]
        if family is FamilyName.SD3 and has["t5"]:
            encoders.append("text_encoder_3")
    return (*found, *encoders)


def _classify_checkpoint(header: WeightsHeader) -> Classification | None:
    t = header.tensors
    architecture = infer_architecture(t)
    if architecture is None or architecture.startswith("controlnet"):
        return None
    family = FAMILY_OF_ARCHITECTURE.get(architecture)
    problem = None
    if family is None:
        problem = f"a {architecture} checkpoint (as diffusers names it): no Easel model family serves it"
    return Classification(
        Kind.CHECKPOINT,
        architecture=architecture,
        family=family,
        families=(family,) if family else (),
        base=BASE_OF_ARCHITECTURE.get(architecture),
        format="ldm",
        components=_components(t, architecture, family),
        prediction="v_prediction" if "v_pred" in t else None,
        problem=problem,
    )


# --- textual-inversion embeddings ----------------------------------------------------------

_EMBEDDING_WIDTH = {768: "v1", 1024: "v2"}


def _classify_embedding(header: WeightsHeader) -> Classification | None:
    t = header.tensors
    if "clip_l" in t and "clip_g" in t:  # SDXL: one vector set per text encoder
        clip_l, clip_g = t["clip_l"].shape, t["clip_g"].shape
        vectors = clip_l[0] if len(clip_l) == 2 else 1
        problem = None
        if clip_l[-1:] != (768,) or clip_g[-1:] != (1280,):
            problem = f"an SDXL embedding of unexpected widths (clip_l {clip_l}, clip_g {clip_g})"
        return _embedding("sdxl", "xl_base", vectors, problem)
    key = next((k for k in ("emb_params", "string_to_param.*") if k in t), None)
    if key is None and len(t) <= 8:  # another name than "*" in a small A1111 file
        key = next((k for k in t if k.startswith("string_to_param.")), None)
    fmt = "a1111"
    if key is None:
        if len(t) != 1:
            return None
        key = next(iter(t))  # diffusers' learned_embeds: {"<token>": vector(s)}
        fmt = "diffusers"
        if len(t[key].shape) not in (1, 2) or t[key].shape[-1] not in _EMBEDDING_WIDTH:
            return None
    shape = t[key].shape
    if not shape or len(shape) > 2:
        return Classification(Kind.EMBEDDING, format=fmt, problem=f"embedding {key!r} has shape {shape}")
    vectors = shape[0] if len(shape) == 2 else 1
    architecture = _EMBEDDING_WIDTH.get(shape[-1])
    if architecture is None:  # a text encoder of another width: an SD-shaped model of that width
        return _sd_of_width(Kind.EMBEDDING, fmt, shape[-1], vectors=vectors)
    return _embedding(fmt, architecture, vectors, None)


def _embedding(fmt: str, architecture: str, vectors: int, problem: str | None) -> Classification:
    family = FAMILY_OF_ARCHITECTURE[architecture]
    return Classification(
        Kind.EMBEDDING,
        architecture=architecture,
        family=family,
        families=(family,),
        base=BASE_OF_ARCHITECTURE[architecture],
        format=fmt,
        vectors=vectors,
        problem=problem,
    )


# --- VAEs ----------------------------------------------------------------------------------

_VAE_PREFIXES = ("", "first_stage_model.", "vae.")
LATENT_FAMILIES: dict[int, tuple[FamilyName, ...]] = {
    4: (FamilyName.SD, FamilyName.SDXL),  # keys cannot tell an SD VAE from an SDXL one
    16: (FamilyName.SD3, FamilyName.FLUX),  # nor an SD3 VAE from a Flux one
}
"""The families whose VAEs have so many latent channels."""


def _classify_vae(header: WeightsHeader) -> Classification | None:
    t = header.tensors
    if UNET + "input_blocks.0.0.weight" in t or "input_blocks.0.0.weight" in t:
        return None  # a checkpoint's VAE, not a VAE file
    prefix = next(
        (p for p in _VAE_PREFIXES if p + "encoder.conv_in.weight" in t and p + "decoder.conv_in.weight" in t),
        None,
    )
    if prefix is None:
        return None
    latent = _dim(t, prefix + "decoder.conv_in.weight", 1)
    fmt = "diffusers" if prefix + "encoder.down_blocks.0.resnets.0.conv1.weight" in t else "ldm"
    families = LATENT_FAMILIES.get(latent or 0, ())
    problem = None if families else f"a VAE of {latent} latent channels: no Easel model family uses it"
    return Classification(
        Kind.VAE,
        family=None,
        families=families,
        format=fmt,
        latent_channels=latent,
        problem=problem,
    )


# --- ControlNets ---------------------------------------------------------------------------

_FLUX_CONTROLNET_KEYS = (
    "controlnet_single_blocks.0.weight",
    "time_text_embed.guidance_embedder.linear_1.weight",
    "double_blocks.0.img_attn.qkv.weight",
    "single_transformer_blocks.0.attn.to_q.weight",
)
_CONTROLNET_CROSS_KEYS = (
    "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",  # LDM SD 1.x/2.x
    "control_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",  # LDM SDXL
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",  # diffusers SD 1.x/2.x
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",  # diffusers SDXL
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
)


def _classify_controlnet(header: WeightsHeader) -> Classification | None:
    t = header.tensors
    if "lora_controlnet" in t:
        return Classification(
            Kind.CONTROLNET,
            format="control-lora",
            problem="a Control-LoRA (Stability AI): diffusers' ControlNetModel does not load it",
        )
    ldm = "control_model.input_hint_block.0.weight" in t or "control_model.time_embed.0.weight" in t
    ldm = ldm or ("input_hint_block.0.weight" in t and "zero_convs.0.0.weight" in t)
    diffusers = "controlnet_cond_embedding.conv_in.weight" in t and "controlnet_down_blocks.0.weight" in t
    if ldm or diffusers:
        context = next((_dim(t, key, 1) for key in _CONTROLNET_CROSS_KEYS if key in t), None)
        if context is None:
            context = next((_dim(t, k, 1) for k in t if k.endswith("attn2.to_k.weight")), None)
        if KEY_CONTROLNET_XL in t or "control_model.label_emb.0.0.weight" in t:
            context = 2048
        architecture = _CROSS_ATTENTION.get(context or 0)
        return _adapter(
            Kind.CONTROLNET,
            "ldm" if ldm else "diffusers",
            architecture,
            None if architecture else f"a ControlNet of cross-attention width {context}: no known base model",
        )
    if "controlnet_blocks.0.weight" in t or "controlnet_x_embedder.weight" in t:  # transformer ControlNets
        flux = _any(t, _FLUX_CONTROLNET_KEYS)
        if flux:
            return _adapter(Kind.CONTROLNET, "diffusers", "flux-dev", None)
        if "pos_embed.proj.weight" in t:
            return _adapter(Kind.CONTROLNET, "diffusers", "sd3", None)
        return Classification(Kind.CONTROLNET, problem="a transformer ControlNet of no known base model")
    return None


def _adapter(kind: Kind, fmt: str, architecture: str | None, problem: str | None) -> Classification:
    family = FAMILY_OF_ARCHITECTURE.get(architecture or "")
    return Classification(
        kind,
        architecture=architecture,
        family=family,
        families=(family,) if family else (),
        base=BASE_OF_ARCHITECTURE.get(architecture or ""),
        format=fmt,
        problem=problem,
    )


# --- text encoders (ComfyUI's text_encoders/ and clip/) ------------------------------------

_TEXT_ENCODERS: dict[str, tuple[FamilyName, ...]] = {
    "clip_l": (FamilyName.SD3, FamilyName.FLUX),
    "clip_g": (FamilyName.SD3,),
    "t5xxl": (FamilyName.SD3, FamilyName.FLUX),
}


def _classify_text_encoder(header: WeightsHeader) -> Classification | None:
    t = header.tensors
    width: int | None = None
    fmt = "transformers"
    for prefix in ("", "transformer.", "model."):
        width = _dim(t, prefix + "text_model.encoder.layers.0.self_attn.q_proj.weight", 1)
        if width is not None:
            break
    if width is None and "token_embedding.weight" in t:
        width, fmt = _dim(t, "transformer.resblocks.0.attn.in_proj_weight", 1), "open_clip"
    if width is not None:
        name = {768: "clip_l", 1280: "clip_g"}.get(width)
        if name is None:
            problem = f"a CLIP text encoder of width {width}: not one SD3 or Flux uses"
            return Classification(Kind.TEXT_ENCODER, format=fmt, problem=problem)
        return Classification(Kind.TEXT_ENCODER, architecture=name, families=_TEXT_ENCODERS[name], format=fmt)
    d_model = _dim(t, "encoder.block.0.layer.0.SelfAttention.q.weight", 1)
    if d_model is None:
        return None
    if d_model != 4096:
        problem = f"a T5 encoder of width {d_model}: SD3 and Flux use T5-XXL (4096)"
        return Classification(Kind.TEXT_ENCODER, format="transformers", problem=problem)
    families = _TEXT_ENCODERS["t5xxl"]
    return Classification(Kind.TEXT_ENCODER, architecture="t5xxl", families=families, format="transformers")


# --- LoRAs -----------------------------------------------------------------------------------

_ONLY_LORA = "diffusers' load_lora_weights reads LoRA (up/down) matrices only"
_LOKR = "diffusers loads LoKr for Z-Image and Flux.2 only, which Easel does not serve"
_LYCORIS_MARKS: dict[str, str] = {
    "hada_w1_a": f"a LoHa (LyCORIS): {_ONLY_LORA}",
    "lokr_w1": f"a LoKr (LyCORIS): {_LOKR}",
    "lokr_w1_a": f"a LoKr (LyCORIS): {_LOKR}",
    "oft_blocks": f"an OFT (LyCORIS): {_ONLY_LORA}",
    "oft_diag": f"an OFT (LyCORIS): {_ONLY_LORA}",
    "boft_blocks": f"a BOFT (LyCORIS): {_ONLY_LORA}",
    "on_input": f"an (IA)^3 (LyCORIS): {_ONLY_LORA}",
    "diff": f"a full-weight difference (LyCORIS): {_ONLY_LORA}",
    "w_norm": f"a LyCORIS norm-layer adapter: {_ONLY_LORA}",
}
"""The last key component of each LyCORIS algorithm's tensors, and why Easel refuses it."""

_LORA_FORMATS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_"), "kohya"),
    (("base_model.model.",), "peft"),
    (("unet.", "text_encoder.", "text_encoder_2.", "text_encoder_3.", "transformer."), "diffusers"),
    (("diffusion_model.", "model.diffusion_model."), "ldm"),
)
_CROSS_ENDS = ("attn2_to_k", "attn2_to_v", "attn2_processor_to_k", "attn2_processor_to_v")
_WIDTH_ENDS = ("img_attn_qkv", "x_block_attn_qkv", "attn_to_q", "attn_to_k", "attn_qkv", "linear1", "qkv")
_TEXT_ENDS = ("self_attn_q_proj", "self_attn_k_proj")


@dataclass
class _LoraScan:
    """What one pass over a LoRA's keys found."""

    downs: dict[str, str]  # module (``_``-joined) -> the key of its down matrix
    first_down: str | None = None
    lycoris: str | None = None
    dora: bool = False


_DOWN_SUFFIXES = {
    ".lora_down.weight": ".lora_down.weight",  # kohya
    ".lora_A.weight": ".lora_A.weight",  # peft, diffusers
    ".lora.down.weight": ".lora.down.weight",  # diffusers before peft
    "_lora.down.weight": "_lora.down.weight",  # diffusers' attention processors
    "_lora1.down.weight": ".down.weight",  # XLabs' Flux LoRAs
    "_lora2.down.weight": ".down.weight",
}
_DOWN_ENDS = tuple(_DOWN_SUFFIXES)
_PAIRED_ENDS = (".lora_up.weight", ".lora_B.weight", ".alpha", ".up.weight")
_LYCORIS_ENDS = tuple(f".{mark}" for mark in _LYCORIS_MARKS)
_GLORA_ENDS = (".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight")


def _scan_lora(tensors: Tensors) -> _LoraScan:
    """One pass over the key names, C-level suffix tests first (a LoRA has thousands of
    keys, a third of them down matrices); shapes of the down matrices only."""
    scan = _LoraScan({})
    for key in tensors:
        if key.endswith(_DOWN_ENDS):
            cut = 17 if key.endswith(".lora_down.weight") else _down_cut(key)
            scan.downs[key[:-cut].replace(".", "_")] = key
            if scan.first_down is None:
                scan.first_down = key
        elif key.endswith(_PAIRED_ENDS):
            continue
        elif key.endswith(".dora_scale"):
            scan.dora = True
        elif scan.lycoris is None and key.endswith(_LYCORIS_ENDS):
            scan.lycoris = _LYCORIS_MARKS[key.rpartition(".")[2]]
        elif scan.lycoris is None and key.endswith(_GLORA_ENDS):
            scan.lycoris = f"a GLoRA (LyCORIS): {_ONLY_LORA}"
    return scan


def _has(text: str, parts: tuple[str, ...]) -> bool:
    return any(part in text for part in parts)


_SECOND_BLOCK = re.compile(r"transformer_blocks_(?!0_)\d")  # only SDXL's UNet has several per attention
_SDXL_TEXT = re.compile(r"^(?:lora_te1_|lora_te2_|text_encoder_2_)", re.MULTILINE)


def _down_cut(key: str) -> int:
    """How many characters of ``key`` name its down matrix rather than its module."""
    return next(len(name) for end, name in _DOWN_SUFFIXES.items() if key.endswith(end))


def _width(tensors: Tensors, downs: Mapping[str, str], ends: tuple[str, ...]) -> int | None:
    """The in-features of the first down matrix of a module named ``*ends``."""
    for module, key in downs.items():
        if module.endswith(ends):
            shape = tensors[key].shape
            if len(shape) >= 2:
                return shape[1]
    return None


def _lora_architecture(tensors: Tensors, downs: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The architecture a LoRA's modules and shapes were trained on, or None and why not."""
    text = "\n".join(downs)  # one search per marker, not one per module
    flux = _has(text, ("double_blocks", "single_blocks", "single_transformer_blocks"))
    joint = _has(text, ("joint_blocks", "context_block"))
    transformer = "transformer_blocks" in text
    unet = _has(text, ("attentions", "input_blocks", "output_blocks", "middle_block"))
    if flux or joint or (transformer and not unet):
        width = _width(tensors, downs, _WIDTH_ENDS)
        if flux or width == 3072:
            if width not in (None, 3072):
                return None, f"a Flux LoRA of width {width} (Flux.1 is 3072)"
            return "flux-dev", None
        architecture = _SD3_WIDTH.get(width or 0)
        if architecture == "sd3" and "attn2" in text:
            architecture = "sd35_medium"
        if architecture is None:
            known = "SD3 (1536), SD3.5 Large (2432) or Flux (3072)"
            return None, f"a transformer LoRA of width {width}: not {known}"
        return architecture, None
    cross = _width(tensors, downs, _CROSS_ENDS)
    if cross is not None:
        architecture = _CROSS_ATTENTION.get(cross)
        return architecture, None if architecture else f"a UNet LoRA of cross-attention width {cross}"
    if _SDXL_TEXT.search(text) or _SECOND_BLOCK.search(text):
        return "xl_base", None
    text_width = _width(tensors, downs, _TEXT_ENDS)
    if text_width in _EMBEDDING_WIDTH:
        return _EMBEDDING_WIDTH[text_width], None
    return None, "cannot tell which base model it is for: no cross-attention or text layer of a known width"


def unet_width_base(width: int) -> str:
    """The ``base`` of an SD-shaped model whose cross-attention width is none of the
    released models' (768, 1024, 2048, 1280), as a model trained from scratch at another
    size (the tests' tiny ones): its LoRAs and embeddings, read by the same width, fit
    exactly the models of that width."""
    return f"unet-{width}"


def _sd_of_width(kind: Kind, fmt: str, width: int, **fields: Any) -> Classification:
    return Classification(
        kind,
        family=FamilyName.SD,
        families=(FamilyName.SD,),
        base=unet_width_base(width),
        format=fmt,
        **fields,
    )


def _classify_lora(header: WeightsHeader) -> Classification | None:
    scan = _scan_lora(header.tensors)
    if scan.lycoris is not None:
        return Classification(Kind.LORA, format="lycoris", problem=scan.lycoris)
    if scan.first_down is None:
        return None
    first = scan.first_down
    fmt = next((name for prefixes, name in _LORA_FORMATS if first.startswith(prefixes)), None)
    if fmt is None:
        fmt = "xlabs" if "processor" in first and "double_blocks" in first else "diffusers"
    architecture, problem = _lora_architecture(header.tensors, scan.downs)
    dora = "a DoRA (dora_scale): diffusers drops its magnitude vectors; it would not draw as trained"
    cross = _width(header.tensors, scan.downs, _CROSS_ENDS)
    if architecture is None and cross is not None and problem and problem.startswith("a UNet LoRA"):
        return _sd_of_width(Kind.LORA, fmt, cross, problem=dora if scan.dora else None)
    if scan.dora and problem is None:
        problem = dora
    return _adapter(Kind.LORA, fmt, architecture, problem)


# --- every kind ------------------------------------------------------------------------------


def classify(header: WeightsHeader) -> Classification:
    """What the file of ``header`` is: the first of checkpoint, ControlNet, VAE, text
    encoder, embedding and LoRA its keys match; ``kind`` None (with the reason in
    ``problem``) when none does."""
    for step in (
        _classify_checkpoint,
        _classify_controlnet,
        _classify_vae,
        _classify_text_encoder,
        _classify_embedding,
        _classify_lora,
    ):
        found = step(header)
        if found is not None:
            return found
    count = len(header.tensors)
    first = next(iter(header.tensors), None)
    return Classification(
        None, problem=f"not a model Easel knows: no known layout in its {count} tensors (first: {first!r})"
    )


def fits(adapter: Classification, model: Classification) -> bool:
    """Whether ``adapter`` (a LoRA, embedding, VAE, ControlNet or text encoder) fits
    ``model`` (a checkpoint or diffusers folder): the same ``base`` where both are known,
    else ``model``'s family among the adapter's ``families``."""
    if adapter.base is not None and model.base is not None:
        return adapter.base == model.base
    return model.family is not None and model.family in adapter.families
