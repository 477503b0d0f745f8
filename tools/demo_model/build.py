"""The components of ``demo-shapes``, SD-shaped and small.

A word-level CLIP tokenizer (CLIP's byte alphabet plus merges that join each word of
the world into one token), a 2-layer CLIP text encoder, a UNet2DConditionModel over
16x16x4 latents (64x64 pixels), a 3-block AutoencoderKL that downsamples by 4, and a
scheduler that ends at pure noise (zero terminal SNR, v-prediction, trailing spacing).
"""

from __future__ import annotations

import itertools
from typing import Any

from tools.demo_model.world import COLORS, SHAPES

WORDS: tuple[str, ...] = ("a", "on", "background", *COLORS, *SHAPES)
"""Words with a token of their own; anything else falls back to characters."""

TEXT_WIDTH = 64

# The schedule that ends at pure noise (Lin et al. 2023), shared by training and serving.
SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "rescale_betas_zero_snr": True,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
}


def word_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's byte alphabet, the specials, and one token per word of ``WORDS``.

    Each word's merges are appended after every earlier one and join the pieces the
    earlier merges leave of it, so no later word can split an earlier one.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [ch + "</w>" for ch in alphabet]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], merges)
        left = pieces[0]
        for right in pieces[1:]:
            merges.append((left, right))
            left = left + right
            if left not in tokens:
                tokens.append(left)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, [f"{a} {b}" for a, b in merges]


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Apply ``merges`` to ``pieces`` as BPE does: the lowest-ranked pair first."""
    rank = {pair: index for index, pair in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(rank.get(pair, len(rank)), i) for i, pair in enumerate(itertools.pairwise(pieces))]
        best, i = min(pairs)
        if best == len(rank):
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def make_tokenizer() -> Any:
    """The CLIPTokenizer of the world's words; raises if a word is not one token."""
    from transformers import CLIPTokenizer

    vocab, merges = word_vocabulary()
    # model_max_length=77 as in SD 1.x; without it the pipeline overflows.
    tokenizer = CLIPTokenizer(
        vocab=vocab, merges=[tuple(merge.split()) for merge in merges], model_max_length=77
    )
    for word in WORDS:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"word {word!r} is not one token: {tokenizer.convert_ids_to_tokens(ids)}")
    return tokenizer


def make_text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            hidden_size=TEXT_WIDTH,
            intermediate_size=128,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            max_position_embeddings=77,
        )
    )


def make_unet(width: int) -> Any:
    """A UNet whose three blocks are ``width``, ``2 * width`` and ``2 * width`` wide."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def make_vae(tiny: bool = False) -> Any:
    from diffusers import AutoencoderKL

    channels = (16, 16, 32) if tiny else (16, 32, 64)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,  # 3 blocks: 2 downsamplings, 64x64 pixels -> 16x16 latents
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
    )


def training_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE, clip_sample=False)


def serving_scheduler() -> Any:
    """The scheduler saved with the pipeline; Easel makes each job's kind from its config."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(**SCHEDULE, steps_offset=1)  # offset: unused when trailing


def assemble(tokenizer: Any, text_encoder: Any, unet: Any, vae: Any) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=serving_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
