"""Build ``tiny-sd``: a Stable-Diffusion-1.x-shaped pipeline with small random weights.

Same component types and latent geometry as SD 1.x (CLIP text encoder + tokenizer,
UNet2DConditionModel, a 4-block AutoencoderKL that downsamples by 8), built from a
fixed seed so every machine gets the same weights, in about a second, with no
download. It is saved with ``save_pretrained`` and served through the same loader
as real models.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

if TYPE_CHECKING:
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline
    from transformers import CLIPTokenizer

SEED = 0


def _byte_vocabulary() -> dict[str, int]:
    """CLIP's byte-level alphabet (each byte char, alone and word-final) plus specials."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [ch + "</w>" for ch in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def tiny_clip_config(vocab_size: int, **fields: Any) -> Any:
    """The ``CLIPTextConfig`` of the tiny text encoders (2 layers, width 32) over a
    vocabulary of ``vocab_size`` whose last two ids are BOS and EOS/padding; ``fields``
    add to or override it."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **{
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
            "hidden_size": 32,
            "intermediate_size": 37,
            "layer_norm_eps": 1e-05,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": vocab_size,
            "max_position_embeddings": 77,
            **fields,
        }
    )


def _tokenizer() -> tuple[CLIPTokenizer, int]:
    from transformers import CLIPTokenizer

    vocab = _byte_vocabulary()
    # No merges: every character is a token. model_max_length=77 as in SD 1.x;
    # without it the pipeline overflows.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77), len(vocab)


def tiny_unet(**fields: Any) -> Any:
    """The ``UNet2DConditionModel`` of the tiny UNet pipelines (two blocks, 32 and 64 wide),
    from ``SEED``; ``fields`` add to or override it."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        **{
            "block_out_channels": (32, 64),
            "layers_per_block": 2,
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": (2, 4),
            **fields,
        }
    )


def tiny_vae(block_out_channels: tuple[int, ...], **fields: Any) -> Any:
    """An ``AutoencoderKL`` of one block per entry of ``block_out_channels`` (4 blocks: 3
    downsamplings, factor 8 as in SD), from ``SEED``; ``fields`` add to it."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    blocks = len(block_out_channels)
    return AutoencoderKL(
        block_out_channels=block_out_channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        **fields,
    )


def build_tiny_pipeline(inpainting: bool = False) -> DiffusionPipeline:
    """The tiny pipeline in memory, identical on every call.

    ``inpainting`` builds the dedicated-inpainting variant: a 9-channel UNet (latents,
    mask, masked-image latents) in a ``StableDiffusionInpaintPipeline``.
    """
    import torch
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )
    from transformers import CLIPTextModel

    tokenizer, vocab_size = _tokenizer()
    unet = tiny_unet(in_channels=9 if inpainting else 4, cross_attention_dim=32, norm_num_groups=32)
    vae = tiny_vae((32, 32, 64, 64), latent_channels=4, norm_num_groups=32, sample_size=256)
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(tiny_clip_config(vocab_size))
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return pipeline_class(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_tiny_model(location: Path, inpainting: bool = False) -> Path:
    """Build and save ``tiny-sd`` at ``location`` unless it is already there.

    Safe to call from several processes at once: one builds under a file lock and
    moves the finished folder into place; the others wait and reuse it.
    """
    if (location / "model_index.json").exists():
        return location
    location.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(location) + ".lock"):
        if (location / "model_index.json").exists():
            return location
        staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=location.parent))
        try:
            pipeline = build_tiny_pipeline(inpainting)
            out = staging / "model"
            pipeline.save_pretrained(str(out), safe_serialization=True)
            if location.exists():
                shutil.rmtree(location)
            os.replace(out, location)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return location
