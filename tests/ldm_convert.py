"""Test-only: a diffusers Stable Diffusion 1.x pipeline's weights in the ORIGINAL single-file
layout (CompVis / LDM, as A1111 and ComfyUI users have them), and a random-weights SD 1.x
checkpoint of the real architecture.

Modelled on diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py``
(which is not in the installed wheel), generalised from its hard-coded SD 1.x block
counts to any ``UNet2DConditionModel`` / ``AutoencoderKL`` config, so the tiny test model
converts too:

- UNet -> ``model.diffusion_model.*``: ``input_blocks`` (conv_in, then per down block
  ``layers_per_block`` resnet [+ attention] rows and a downsampler row), ``middle_block``
  (resnet, attention, resnet), ``output_blocks`` (``layers_per_block + 1`` rows per up
  block, the upsampler in the block's last row), ``time_embed``, ``out``. Resnet parts are
  renamed (``norm1`` -> ``in_layers.0``, ...); transformer blocks keep their names.
- VAE -> ``first_stage_model.*``: ``encoder.down.{i}.block.{j}``, the decoder's up blocks
  in reverse order, ``mid.block_1/attn_1/block_2``, and the mid attention as LDM's 1x1
  convolutions (``q``, ``k``, ``v``, ``proj_out`` of shape ``[C, C, 1, 1]``, ``norm``).
- CLIP ViT-L text encoder -> ``cond_stage_model.transformer.text_model.*`` (HF's own
  names under LDM's prefix).

diffusers' ``from_single_file`` converts such a file back; the tests compare pixels.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}
_VAE_TOP = {"conv_norm_out.": "norm_out."}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def _rename(key: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def unet_key_map(config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers block prefix -> LDM block prefix for a UNet of ``config``."""
    layers = int(config["layers_per_block"])
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    prefixes: dict[str, str] = {}
    for i, block in enumerate(down):
        for j in range(layers):
            row = (layers + 1) * i + j + 1
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{row}.0."
            if "CrossAttn" in block:
                prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{row}.1."
        if i < len(down) - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op."
    for i, block in enumerate(up):
        attention = "CrossAttn" in block
        for j in range(layers + 1):
            row = (layers + 1) * i + j
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{row}.0."
            if attention:
                prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{row}.1."
        if i < len(up) - 1:
            last = (layers + 1) * i + layers
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{last}.{2 if attention else 1}."
    prefixes["mid_block.resnets.0."] = "middle_block.0."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    prefixes["mid_block.resnets.1."] = "middle_block.2."
    return prefixes


def unet_ldm_name(key: str, config: Mapping[str, Any], prefixes: Mapping[str, str] | None = None) -> str:
    """The LDM name (with ``model.diffusion_model.``) of diffusers UNet parameter ``key``."""
    prefixes = prefixes if prefixes is not None else unet_key_map(config)
    for old, new in prefixes.items():
        if key.startswith(old):
            rest = key[len(old) :]
            if ".resnets." in old:
                rest = _rename(rest, _RESNET)
            return UNET_PREFIX + new + rest
    renamed = _rename(key, _UNET_TOP)
    if renamed == key:
        raise KeyError(f"UNet parameter {key!r} has no place in the LDM layout (an SDXL or other UNet?)")
    return UNET_PREFIX + renamed


def vae_ldm_name(key: str, blocks: int) -> tuple[str, bool]:
    """The LDM name (with ``first_stage_model.``) of diffusers VAE parameter ``key``, and
    whether it is a mid-attention linear weight that LDM keeps as a 1x1 convolution."""
    name = key
    for part in ("encoder", "decoder"):
        if not key.startswith(part + "."):
            continue
        rest = key[len(part) + 1 :]
        if rest.startswith("down_blocks."):
            i, kind, j, tail = rest.split(".", 4)[1:]
            if kind == "resnets":
                name = f"{part}.down.{i}.block.{j}.{_rename(tail, _VAE_RESNET)}"
            else:  # downsamplers.0.conv...
                name = f"{part}.down.{i}.downsample.{tail}"
        elif rest.startswith("up_blocks."):
            i, kind, j, tail = rest.split(".", 4)[1:]
            ldm_i = blocks - 1 - int(i)
            if kind == "resnets":
                name = f"{part}.up.{ldm_i}.block.{j}.{_rename(tail, _VAE_RESNET)}"
            else:
                name = f"{part}.up.{ldm_i}.upsample.{tail}"
        elif rest.startswith("mid_block.resnets."):
            j, tail = rest.split(".", 3)[2:]
            name = f"{part}.mid.block_{int(j) + 1}.{_rename(tail, _VAE_RESNET)}"
        elif rest.startswith("mid_block.attentions.0."):
            tail = _rename(rest[len("mid_block.attentions.0.") :], _VAE_ATTENTION)
            name = f"{part}.mid.attn_1.{tail}"
            conv = tail.endswith(".weight") and not tail.startswith("norm.")
            return VAE_PREFIX + name, conv
        else:
            name = f"{part}.{_rename(rest, _VAE_TOP)}"
    return VAE_PREFIX + name, False


def clip_ldm_name(key: str) -> str:
    """The LDM name of a CLIP ViT-L text encoder parameter (``text_model.`` optional)."""
    return CLIP_PREFIX + key.removeprefix("text_model.")


def pipeline_to_ldm(pipe: Any) -> dict[str, Any]:
    """The UNet, VAE and text encoder of SD 1.x-shaped ``pipe`` as one LDM state dict
    (tensors shared with the pipeline where no reshape is needed)."""
    out: dict[str, Any] = {}
    unet_config = dict(pipe.unet.config)
    prefixes = unet_key_map(unet_config)
    for key, tensor in pipe.unet.state_dict().items():
        out[unet_ldm_name(key, unet_config, prefixes)] = tensor
    blocks = len(pipe.vae.config.down_block_types)
    for key, tensor in pipe.vae.state_dict().items():
        name, conv = vae_ldm_name(key, blocks)
        out[name] = tensor.reshape(*tensor.shape, 1, 1) if conv else tensor
    for key, tensor in pipe.text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        out[clip_ldm_name(key)] = tensor
    return out


def save_ldm(state_dict: Mapping[str, Any], path: Path, dtype: Any = None) -> Path:
    """Write ``state_dict`` to ``path``: ``.safetensors``, or a weights-only ``.ckpt``
    (``torch.save`` of ``{"state_dict": ...}``, as the original checkpoints are)."""
    import torch
    from safetensors.torch import save_file

    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in state_dict.items()
    }
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save({"state_dict": tensors}, str(path))
    return path


# --- a checkpoint of the real SD 1.x architecture, random weights ----------------------

RANDOM_SD15_NAME = "random-sd15-fp16.safetensors"
RANDOM_SD15_VERSION = "1"


def test_cache_dir() -> Path:
    """Where tests keep large built files, outside the work tree: ``$EASEL_TEST_CACHE`` or
    ``~/.cache/easel-tests``."""
    return Path(os.environ.get("EASEL_TEST_CACHE") or Path.home() / ".cache" / "easel-tests")


def sd15_parameters(config_dir: Path) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(LDM name, shape) of every tensor of an SD 1.x checkpoint built from the configs in
    ``config_dir`` (unet/, vae/, text_encoder/), from models made on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet_config = json.loads((config_dir / "unet" / "config.json").read_text())
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(json.loads((config_dir / "vae" / "config.json").read_text()))
        text = CLIPTextModel(CLIPTextConfig.from_json_file(str(config_dir / "text_encoder" / "config.json")))
    prefixes = unet_key_map(unet_config)
    for key, tensor in unet.state_dict().items():
        yield unet_ldm_name(key, unet_config, prefixes), tuple(tensor.shape)
    blocks = len(vae.config.down_block_types)
    for key, tensor in vae.state_dict().items():
        name, conv = vae_ldm_name(key, blocks)
        yield name, (*tensor.shape, 1, 1) if conv else tuple(tensor.shape)
    for key, tensor in text.state_dict().items():
        if not key.endswith("position_ids"):
            yield clip_ldm_name(key), tuple(tensor.shape)


def _random_tensor(name: str, shape: tuple[int, ...], generator: Any) -> Any:
    """A float16 tensor for ``name``: biases 0, norms' scales (the only 1-D weights) 1,
    every other weight N(0, 0.02) from ``generator``."""
    import torch

    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.float16)
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.float16)
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.float16)


def write_safetensors_streaming(
    path: Path,
    entries: Iterable[tuple[str, tuple[int, ...]]],
    make: Callable[[str, tuple[int, ...]], Any],
    metadata: Mapping[str, str],
) -> None:
    """Write a float16 safetensors file of ``entries`` one tensor at a time (``make`` gives
    each), so memory holds one tensor, not the model."""
    entries = list(entries)
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, shape in entries:
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data as safetensors does
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for name, shape in entries:
            tensor = make(name, shape)
            handle.write(tensor.contiguous().numpy().tobytes())


def ensure_random_sd15(config_dir: Path, cache_dir: Path | None = None) -> Path:
    """An fp16 ``.safetensors`` checkpoint of the real SD 1.x architecture (UNet, VAE,
    CLIP ViT-L; about 2.1 GB) with random weights from a fixed seed, in the LDM layout.
    Built once into ``cache_dir`` (``test_cache_dir()``), reused while its header is
    whole and says it is this version."""
    import torch

    from easel.shared.weights_header import UnreadableWeights, read_header

    cache_dir = cache_dir or test_cache_dir()
    path = cache_dir / RANDOM_SD15_NAME
    if path.is_file():
        try:
            if read_header(path).metadata.get("easel-random-sd15") == RANDOM_SD15_VERSION:
                return path
        except UnreadableWeights:
            pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    fd, staging = tempfile.mkstemp(prefix=".random-sd15-", suffix=".part", dir=cache_dir)
    os.close(fd)
    try:
        write_safetensors_streaming(
            Path(staging),
            sd15_parameters(config_dir),
            lambda name, shape: _random_tensor(name, shape, generator),
            {"easel-random-sd15": RANDOM_SD15_VERSION, "format": "pt"},
        )
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return path


CONTROLNET_PREFIX = "control_model."


def controlnet_ldm_name(key: str, config: Mapping[str, Any], hint_blocks: int) -> str:
    """The original (``cldm``) name of diffusers ControlNet parameter ``key``, as A1111's
    ``models/ControlNet`` files hold them: the encoder as the UNet's, under ``control_model.``,
    plus the hint encoder, the zero convolutions and the middle block's output."""
    for old, new in (
        ("controlnet_down_blocks.", "zero_convs."),
        ("controlnet_mid_block.", "middle_block_out."),
    ):
        if key.startswith(old):
            index, _, rest = key[len(old) :].partition(".")
            if old == "controlnet_mid_block.":
                return f"{CONTROLNET_PREFIX}middle_block_out.0.{index}"  # index is weight/bias here
            return f"{CONTROLNET_PREFIX}{new}{index}.0.{rest}"
    if key.startswith("controlnet_cond_embedding."):
        rest = key.removeprefix("controlnet_cond_embedding.")
        if rest.startswith("conv_in."):
            return f"{CONTROLNET_PREFIX}input_hint_block.0.{rest.removeprefix('conv_in.')}"
        if rest.startswith("conv_out."):
            last = 2 * (hint_blocks + 1)
            return f"{CONTROLNET_PREFIX}input_hint_block.{last}.{rest.removeprefix('conv_out.')}"
        index, _, tail = rest.removeprefix("blocks.").partition(".")
        return f"{CONTROLNET_PREFIX}input_hint_block.{2 * (int(index) + 1)}.{tail}"
    prefixes = {k: v for k, v in unet_key_map({**config, "up_block_types": []}).items()}
    return CONTROLNET_PREFIX + unet_ldm_name(key, config, prefixes).removeprefix(UNET_PREFIX)


def controlnet_to_ldm(controlnet: Any) -> dict[str, Any]:
    """A diffusers ``ControlNetModel``'s weights in the original single-file layout."""
    hint_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    config = dict(controlnet.config)
    return {controlnet_ldm_name(k, config, hint_blocks): v for k, v in controlnet.state_dict().items()}
