"""Small files that look, header for header, like the model files people have, and the
folders they keep them in (AUTOMATIC1111, ComfyUI, a Hugging Face cache).

The tensor tables and the ``.safetensors`` writer are ``bench.model_headers``' (the
benchmarks may not import tests): real key names and shapes, zeros for weights, every
dimension no detection reads shrunk to 1. ``write_ckpt`` writes the same tables as a
PyTorch zip checkpoint (``torch.save``: the test imports torch), as A1111's ``.ckpt`` and
``.pt`` files are. Nothing here loads into a pipeline; ``tests/ldm_convert.py`` makes
loadable single files. ``write_tiny_esrgan`` is the exception: a real (tiny) upscaler
model of spandrel's own ESRGAN class, which upscale jobs load and run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.model_headers import (
    CHECKPOINTS,
    LORA_BASES,
    LORA_FORMATS,
    SHRINK_ABOVE,
    Table,
    checkpoint,
    clip_text,
    controlnet,
    embedding,
    lora,
    numel,
    shrunk,
    t5_encoder,
    vae,
    write_safetensors,
)

__all__ = [
    "CHECKPOINTS",
    "LORA_BASES",
    "LORA_FORMATS",
    "Table",
    "a1111_models",
    "checkpoint",
    "clip_text",
    "comfyui_models",
    "controlnet",
    "diffusers_pipeline",
    "embedding",
    "esrgan",
    "hub_model",
    "lora",
    "t5_encoder",
    "upscaled",
    "vae",
    "write_a1111_embedding",
    "write_ckpt",
    "write_safetensors",
    "write_tiny_esrgan",
]

_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "F64": "float64"}


def _tensors(table: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, Any]:
    import torch

    small = sum(numel(shape) for shape, _ in table.values()) <= SHRINK_ABOVE
    return {
        key: torch.zeros(shape if small else shrunk(key, shape), dtype=getattr(torch, _TORCH_DTYPES[dtype]))
        for key, (shape, dtype) in table.items()
    }


def write_ckpt(path: Path, table: Table, *, lightning: bool = True) -> Path:
    """``table`` as a PyTorch zip checkpoint (shrunk as ``write_safetensors`` does), under
    ``state_dict`` with Lightning's other keys as the original releases hold it
    (``lightning=False``: the bare dict)."""
    import torch

    tensors = _tensors(table)
    obj: dict[str, Any] = {"state_dict": tensors, "global_step": 840000, "epoch": 6} if lightning else tensors
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_a1111_embedding(path: Path, *, width: int = 768, vectors: int = 4, name: str = "style") -> Path:
    """A textual-inversion ``.pt`` as A1111 saves it (``string_to_param``/``string_to_token``
    under ``*``, the name, the step and the checkpoint it was trained on)."""
    import torch

    data = {
        "string_to_token": {"*": torch.tensor(265)},
        "string_to_param": {"*": torch.zeros(vectors, width)},
        "name": name,
        "step": 3000,
        "sd_checkpoint": "cc6cb27103",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def esrgan(filters: int = 64, blocks: int = 23, *, dtype: str = "F32") -> Table:
    """The tensor table of an ESRGAN (the old RRDB layout ``4x-UltraSharp.pth`` has, 4x):
    what an upscaler folder holds. The catalog never reads these keys (the folder tells)."""
    table: Table = {"model.0.weight": ((filters, 3, 3, 3), dtype), "model.0.bias": ((filters,), dtype)}
    grow = 32
    for block in range(blocks):
        for rdb in range(1, 4):
            for conv in range(1, 6):
                key = f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0"
                out = filters if conv == 5 else grow
                table[f"{key}.weight"] = ((out, filters + (conv - 1) * grow, 3, 3), dtype)
                table[f"{key}.bias"] = ((out,), dtype)
    for index in (3, 6, 8, 10):
        out = 3 if index == 10 else filters
        table[f"model.{index}.weight"] = ((out, filters, 3, 3), dtype)
        table[f"model.{index}.bias"] = ((out,), dtype)
    return table


def write_tiny_esrgan(path: Path, seed: int = 0) -> Any:
    """A tiny ESRGAN of spandrel's own class (8 filters, 1 block, 4x), random weights from
    ``seed``, saved at ``path`` as its suffix says (``.safetensors``, else ``torch.save`` of
    the state dict, as ``.pth`` upscalers are); the module, in eval mode (``upscaled``)."""
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model


def upscaled(model: Any, image: Any) -> Any:
    """``model``'s output for a PIL ``image``, as 0..255 floats (H x W x 3): what an upscale
    job naming it should store, within rounding."""
    import numpy as np
    import torch

    with torch.inference_mode():
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        out = model(pixels.permute(2, 0, 1).unsqueeze(0))[0]
    return out.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0


def diffusers_pipeline(
    folder: Path,
    class_name: str = "StableDiffusionPipeline",
    *,
    unet: dict[str, Any] | None = None,
    transformer: dict[str, Any] | None = None,
    weights: bool = True,
) -> Path:
    """A diffusers pipeline folder's files with empty weights: ``model_index.json``,
    component configs (``unet``'s or ``transformer``'s given), a scheduler and tokenizer;
    ``weights=False`` leaves the denoiser's weights out (an interrupted download)."""
    denoiser = "unet" if transformer is None else "transformer"
    index: dict[str, Any] = {
        "_class_name": class_name,
        "_diffusers_version": "0.42.1",
        denoiser: ["diffusers", "UNet2DConditionModel" if denoiser == "unet" else "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "safety_checker": [None, None],
    }
    _json(folder / "model_index.json", index)
    _json(folder / denoiser / "config.json", (unet if transformer is None else transformer) or {})
    if weights:
        (folder / denoiser / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    _json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", "latent_channels": 4})
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    _json(folder / "text_encoder" / "config.json", {"hidden_size": 768})
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"")
    _json(folder / "tokenizer" / "tokenizer_config.json", {})
    _json(folder / "scheduler" / "scheduler_config.json", {"_class_name": "EulerDiscreteScheduler"})
    return folder


def hub_model(
    cache: Path, repo_id: str, class_name: str = "StableDiffusionPipeline", *, revision: str = "0" * 40
) -> Path:
    """A pipeline in a Hugging Face hub cache as huggingface_hub lays it out: blobs named
    by content hash, a snapshot of links to them, ``refs/main``; the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    staging = repo / "staging"
    diffusers_pipeline(staging, class_name, unet={"cross_attention_dim": 768, "in_channels": 4})
    snapshot = repo / "snapshots" / revision
    for file in sorted(p for p in staging.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data + str(file.relative_to(staging)).encode()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(staging)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(file.relative_to(staging).parts) + 1)) / "blobs" / blob.name)
    shutil.rmtree(staging)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def _json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def a1111_models(webui: Path) -> dict[str, Path]:
    """An AUTOMATIC1111 install's ``models`` folder and ``embeddings`` beside it, with one
    file of each kind (and an original-config ``.yaml`` beside the SD 2.x checkpoint);
    name -> path, ``"models"`` the folder itself."""
    models = webui / "models"
    files = {
        "models": models,
        "sd15": write_safetensors(models / "Stable-diffusion" / "sd15.safetensors", checkpoint("v1")),
        "sd21": write_safetensors(
            models / "Stable-diffusion" / "v2" / "sd21-768.safetensors", checkpoint("v2")
        ),
        "sdxl": write_safetensors(
            models / "Stable-diffusion" / "sdxl_base.safetensors", checkpoint("xl_base")
        ),
        "lora": write_safetensors(models / "Lora" / "watercolor.safetensors", lora("sd1")),
        "lora_xl": write_safetensors(models / "Lora" / "xl" / "pixel art.safetensors", lora("sdxl")),
        "locon": write_safetensors(models / "LyCORIS" / "loha-style.safetensors", lora("sd1", "loha")),
        "vae": write_safetensors(models / "VAE" / "vae-ft-mse.safetensors", vae("")),
        "controlnet": write_safetensors(
            models / "ControlNet" / "control_canny.safetensors", controlnet("sd1")
        ),
        "embedding": write_safetensors(webui / "embeddings" / "bad-hands.safetensors", embedding()),
        "upscaler": write_safetensors(models / "ESRGAN" / "4x-sharp.safetensors", esrgan()),
    }
    yaml = files["sd21"].with_suffix(".yaml")
    yaml.write_text("model:\n  params:\n    parameterization: v\n")
    files["sd21_yaml"] = yaml
    return files


def comfyui_models(models: Path) -> dict[str, Path]:
    """A ComfyUI ``models`` folder with one file of each kind, Flux split the ComfyUI way
    (transformer in ``diffusion_models/``, CLIP-L and T5 in ``text_encoders/``, its VAE in
    ``vae/``), an upscaler in ``upscale_models/``; name -> path, ``"models"`` the folder itself."""
    return {
        "models": models,
        "sd15": write_safetensors(models / "checkpoints" / "sd15.safetensors", checkpoint("v1")),
        "flux": write_safetensors(
            models / "diffusion_models" / "flux1-dev.safetensors",
            checkpoint("flux-dev", bare=True, unprefixed=True),
        ),
        "clip_l": write_safetensors(models / "text_encoders" / "clip_l.safetensors", clip_text("")),
        "t5": write_safetensors(models / "text_encoders" / "t5xxl_fp16.safetensors", t5_encoder(layers=2)),
        "ae": write_safetensors(models / "vae" / "ae.safetensors", vae("", latent=16)),
        "lora": write_safetensors(models / "loras" / "flux-style.safetensors", lora("flux")),
        "embedding": write_safetensors(models / "embeddings" / "neg.safetensors", embedding()),
        "controlnet": write_safetensors(
            models / "controlnet" / "canny-xl.safetensors", controlnet("sdxl", "diffusers")
        ),
        "pipeline": diffusers_pipeline(
            models / "diffusers" / "sd15-diffusers", unet={"cross_attention_dim": 768, "in_channels": 4}
        ),
        "upscaler": write_safetensors(models / "upscale_models" / "4x-sharp.safetensors", esrgan()),
    }
