"""Tiny random-weight pipelines of every model family, built locally (no download).

Built as diffusers' own tests build them (``get_dummy_components`` of the SDXL, SD3 and
Flux pipeline tests): the real component classes (CLIP and T5 text encoders, a UNet or
an MMDiT transformer, an AutoencoderKL) at toy widths, with the real latent geometry
(a VAE that downsamples by 8; 16 latent channels for SD3 and Flux), so a family's
pipeline runs end to end in a fraction of a second per step on a CPU. The tokenizers are
made from generated vocabularies: CLIP's byte alphabet (``tiny_model``) and a
Unigram vocabulary of letters and digits for T5.

``build_family_pipeline(family)`` returns one in memory; ``save_family_model`` saves it
as a diffusers folder (``model_index.json`` names the pipeline class, so Easel reads the
family from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.shared.families import FamilyName
from easel.worker.engine.tiny_model import SEED, build_tiny_pipeline, tiny_clip_config, tiny_unet, tiny_vae
from easel.worker.engine.tiny_model import _tokenizer as clip_tokenizer

if TYPE_CHECKING:
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

T5_MAX_LENGTH = 64
_T5_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _t5_vocab() -> list[tuple[str, float]]:
    """A Unigram vocabulary as T5's: <pad> 0, </s> 1, <unk> 2, then pieces and scores."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    return specials + [(f"\u2581{c}", -2.5) for c in _T5_CHARS] + [(c, -3.0) for c in _T5_CHARS]


def t5_tokenizer() -> Any:
    """A T5TokenizerFast over a generated Unigram vocabulary (letters and digits, no
    sentencepiece model), which ``from_pretrained`` reloads offline."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=_t5_vocab(), extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _t5_encoder() -> Any:
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(SEED)
    return T5EncoderModel(
        T5Config(
            vocab_size=len(_t5_vocab()),
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def _clip_encoder(vocab_size: int, projection: bool) -> Any:
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    config = tiny_clip_config(vocab_size, hidden_act="gelu", projection_dim=32)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(latent_channels: int, flow: bool) -> Any:
    """A 4-block ``tiny_vae``; SD3/Flux-style (no quant convs) if ``flow``."""
    extra: dict[str, Any] = (
        {
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "shift_factor": 0.0609,
            "scaling_factor": 1.5035,
        }
        if flow
        else {}
    )
    return tiny_vae(
        (16, 16, 32, 32), latent_channels=latent_channels, norm_num_groups=8, sample_size=128, **extra
    )


def _sdxl() -> DiffusionPipeline:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer, vocab_size = clip_tokenizer()
    unet = tiny_unet(
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled 32
        cross_attention_dim=64,  # the two encoders' 32 + 32
        norm_num_groups=1,
    )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=_vae(4, flow=False),
        text_encoder=_clip_encoder(vocab_size, projection=False),
        text_encoder_2=_clip_encoder(vocab_size, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer()[0],
        unet=unet,
        scheduler=scheduler,
    )


def _sd3() -> DiffusionPipeline:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, vocab_size = clip_tokenizer()
    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,  # the T5 width (CLIP's 32 + 32 is cut to it)
        pooled_projection_dim=64,  # the two CLIP projections, 32 + 32
        out_channels=16,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, flow=True),
        text_encoder=_clip_encoder(vocab_size, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip_encoder(vocab_size, projection=True),
        tokenizer_2=clip_tokenizer()[0],
        text_encoder_3=_t5_encoder(),
        tokenizer_3=t5_tokenizer(),
    )


def _flux() -> DiffusionPipeline:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, vocab_size = clip_tokenizer()
    torch.manual_seed(SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # the T5 width
        pooled_projection_dim=32,  # CLIP's pooled output
        guidance_embeds=True,  # distilled guidance, as Flux.1-dev
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_vae(16, flow=True),
        text_encoder=_clip_encoder(vocab_size, projection=False),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(),
        tokenizer_2=t5_tokenizer(),
    )


def build_family_pipeline(family: FamilyName | str) -> DiffusionPipeline:
    """A tiny random pipeline of ``family``, identical on every call."""
    builders = {
        FamilyName.SD: build_tiny_pipeline,
        FamilyName.SDXL: _sdxl,
        FamilyName.SD3: _sd3,
        FamilyName.FLUX: _flux,
    }
    pipe = builders[FamilyName(family)]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_family_model(family: FamilyName | str, folder: Path) -> Path:
    """Build ``family``'s tiny pipeline and save it as a diffusers folder at ``folder``."""
    build_family_pipeline(family).save_pretrained(str(folder), safe_serialization=True)
    return folder
