"""Tiny adapters for the tiny models: a LoRA (peft on the UNet's attention) and a
ControlNet (``ControlNetModel.from_unet``), built from fixed seeds and saved the way
real ones are (``save_lora_weights``, ``save_pretrained``)."""

from __future__ import annotations

from pathlib import Path

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
