"""Tiny adapters for the tiny models: a LoRA (peft on the UNet's attention), a
ControlNet (``ControlNetModel.from_unet``), a VAE (the model's own, perturbed) and a
textual-inversion embedding, built from fixed seeds and saved the way real ones are
(``save_lora_weights``, ``save_pretrained``, A1111's single-file VAEs and embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LORA_SEED = 7


def build_tiny_lora(model_dir: Path, out: Path) -> Path:
    """A rank-4 LoRA with random (non-zero) weights for the attention of the UNet (or
    transformer) of the pipeline at ``model_dir``; its folder
    (``pytorch_lora_weights.safetensors``)."""
    import torch
    from diffusers import AutoPipelineForText2Image
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = AutoPipelineForText2Image.from_pretrained(str(model_dir), local_files_only=True)
    torch.manual_seed(LORA_SEED)
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    if getattr(pipe, "unet", None) is not None:  # SD 1.x, SDXL
        pipe.unet.add_adapter(config)
        layers = {"unet_lora_layers": get_peft_model_state_dict(pipe.unet)}
    else:  # SD3, Flux: the transformer
        pipe.transformer.add_adapter(config)
        layers = {"transformer_lora_layers": get_peft_model_state_dict(pipe.transformer)}
    type(pipe).save_lora_weights(str(out), **layers, safe_serialization=True)
    return out


def build_tiny_controlnet(model_dir: Path, out: Path) -> Path:
    """A ControlNet initialised from the UNet of the pipeline at ``model_dir`` (its
    zero convolutions then made non-zero, so the control image changes the pixels)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet", local_files_only=True)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 32, 32))
    torch.manual_seed(LORA_SEED)
    with torch.no_grad():
        for block in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            block.weight.normal_(0, 0.05)
    controlnet.save_pretrained(str(out))
    return out


VAE_SEED = 11
EMBEDDING_SEED = 13


def build_tiny_vae(model_dir: Path, out: Path, scale: float = 0.2) -> Path:
    """The VAE of the pipeline at ``model_dir`` with every weight perturbed (each times
    ``1 + scale * noise``, fixed seed), as A1111's ``models/VAE`` files are: one file in the
    original (LDM) layout without the checkpoint's ``first_stage_model.`` prefix
    (``tests/ldm_convert.py``'s names, the mid attention as 1x1 convolutions),
    ``.safetensors`` or a weights-only ``.ckpt`` by ``out``'s suffix; or, for any other
    ``out``, a diffusers folder (``save_pretrained``) of the same weights."""
    import torch
    from diffusers import AutoencoderKL

    from tests.ldm_convert import VAE_PREFIX, save_ldm, vae_ldm_name

    vae = AutoencoderKL.from_pretrained(str(model_dir), subfolder="vae", local_files_only=True)
    generator = torch.Generator().manual_seed(VAE_SEED)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.mul_(1 + scale * torch.randn(parameter.shape, generator=generator))
    if out.suffix not in (".safetensors", ".ckpt"):
        vae.save_pretrained(str(out))
        return out
    blocks = len(vae.config.down_block_types)
    state: dict[str, Any] = {}
    for key, tensor in vae.state_dict().items():
        name, conv = vae_ldm_name(key, blocks)
        state[name.removeprefix(VAE_PREFIX)] = tensor.reshape(*tensor.shape, 1, 1) if conv else tensor
    return save_ldm(state, out)


def build_tiny_embedding(model_dir: Path, out: Path, vectors: int = 2, scale: float = 3.0) -> Path:
    """A textual-inversion embedding of ``vectors`` random vectors (fixed seed; ``scale``
    times the spread of the text encoder's own token embeddings) for the pipeline at
    ``model_dir``, as A1111 saves them: ``.pt`` with ``string_to_param`` ``{"*": [n, width]}``
    (and its ``name``, ``step``, ...), ``.safetensors`` with ``emb_params``; for a
    pipeline with two text encoders (SDXL), ``.safetensors`` with ``clip_l`` and ``clip_g``."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    generator = torch.Generator().manual_seed(EMBEDDING_SEED)

    def random_vectors(encoder: Any) -> Any:
        table = encoder.get_input_embeddings().weight.detach()
        noise = torch.randn((vectors, table.shape[1]), generator=generator)
        return (table.mean(0) + scale * table.std() * noise).contiguous()

    first = random_vectors(
        CLIPTextModel.from_pretrained(str(model_dir), subfolder="text_encoder", local_files_only=True)
    )
    if (model_dir / "text_encoder_2").is_dir():
        second = CLIPTextModelWithProjection.from_pretrained(
            str(model_dir), subfolder="text_encoder_2", local_files_only=True
        )
        save_file({"clip_l": first, "clip_g": random_vectors(second)}, str(out))
    elif out.suffix == ".safetensors":
        save_file({"emb_params": first}, str(out))
    else:
        torch.save(
            {
                "string_to_token": {"*": 265},
                "string_to_param": {"*": first},
                "name": out.stem,
                "step": 1000,
                "sd_checkpoint": None,
                "sd_checkpoint_name": "tiny-sd",
            },
            str(out),
        )
    return out


def write_kohya_lora(lora_folder: Path, out: Path) -> Path:
    """The LoRA saved by ``build_tiny_lora`` (diffusers/PEFT keys) as kohya's sd-scripts
    save SD 1.x LoRAs, the format of most files in an A1111 or ComfyUI ``loras`` folder:
    ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` and an
    ``.alpha`` equal to the rank, so it draws exactly as the diffusers file."""
    import torch
    from safetensors.torch import load_file, save_file

    kohya: dict[str, Any] = {}
    for key, tensor in load_file(str(lora_folder / "pytorch_lora_weights.safetensors")).items():
        module, _, matrix = key.removeprefix("unet.").rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        if matrix.startswith("A"):
            kohya[f"{name}.lora_down.weight"] = tensor
            kohya[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0]))
        else:
            kohya[f"{name}.lora_up.weight"] = tensor
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya, str(out))
    return out


def write_peft_lora(lora_folder: Path, out: Path) -> Path:
    """The same LoRA as PEFT's own ``save_pretrained`` names it (``base_model.model.<module>``),
    a format diffusers' ``load_lora_weights`` reads as no weights at all."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(lora_folder / "pytorch_lora_weights.safetensors"))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"base_model.model." + k.removeprefix("unet."): v for k, v in weights.items()}, str(out))
    return out
