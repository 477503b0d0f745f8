"""Single-file checkpoints in the original LDM layout (worker/engine/single_file.py).

The shipped configs are checked against what diffusers derives from the original LDM /
SGM inference configs and against published parameter counts; the CLIP tokenizer built
from the shipped BPE against known ids; detection against diffusers' own reading. Tiny
checkpoints converted by ``tests/ldm_convert.py`` (fp32, fp16, ``.ckpt``) draw the same
pixels as the diffusers folder they came from. The slow test loads a random-weights file
of the real SD 1.x architecture with neither family nor config, while a stand-in hub
records that nobody asked it anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from easel.shared.errors import ModelLoadError
from easel.shared.families import FamilyName
from easel.shared.models import JobType
from easel.shared.registry import ModelSource, ModelSpec
from easel.shared.weights_header import TensorInfo, WeightsHeader, read_header
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.pipelines import load_pipeline
from easel.worker.engine.single_file import (
    ARCHITECTURES,
    SHIPPED_CONFIGS,
    clip_vocabulary,
    detect,
    materialize_configs,
    prediction_type_of,
)
from easel.worker.engine.tiny_model import ensure_tiny_model
from tests.factories import box_mask, generate_one, generation_request, gradient
from tests.hub_recorder import hub_recorder
from tests.ldm_convert import ensure_random_sd15, pipeline_to_ldm, save_ldm, sd15_parameters

CPU = DevicePlan("cpu", "float32")
REPO = Path(__file__).resolve().parents[2]
ARCHS = ("v1", "inpainting", "v2", "inpainting_v2", "xl_base", "xl_refiner", "xl_inpaint")

# --- the original inference configs, as far as diffusers reads them ---------------------
# v1: AUTOMATIC1111/stable-diffusion-webui configs/v1-inference.yaml; inpainting:
# configs/v1-inpainting-inference.yaml; v2: configs/v2-inference-v.yaml; inpainting_v2:
# configs/v2-inpaint.yaml; xl_base / xl_refiner: Stability-AI/generative-models
# configs/inference/sd_xl_base.yaml, sd_xl_refiner.yaml; xl_inpaint: A1111's
# configs/sd_xl_inpaint.yaml.

_SD_VAE = {
    "z_channels": 4,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
}
_SD1_UNET = {
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_heads": 8,
    "transformer_depth": 1,
    "context_dim": 768,
}
_SD2_UNET = {
    **{k: v for k, v in _SD1_UNET.items() if k != "num_heads"},
    "num_head_channels": 64,
    "use_linear_in_transformer": True,
    "context_dim": 1024,
}
_XL_UNET = {
    "adm_in_channels": 2816,
    "num_classes": "sequential",
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4],
    "num_head_channels": 64,
    "use_linear_in_transformer": True,
    "transformer_depth": [1, 2, 10],
    "context_dim": 2048,
}
_REFINER_UNET = {
    **_XL_UNET,
    "adm_in_channels": 2560,
    "model_channels": 384,
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": 4,
    "context_dim": [1280, 1280, 1280, 1280],
}


def _ldm(
    unet: dict[str, Any], in_channels: int, scale: float, v: bool = False, xl: bool = False
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "linear_start": 0.00085,
        "linear_end": 0.012,
        "timesteps": 1000,
        "scale_factor": scale,
        "first_stage_config": {"params": {"ddconfig": _SD_VAE}},
        ("network_config" if xl else "unet_config"): {"params": {**unet, "in_channels": in_channels}},
    }
    if v:
        params["parameterization"] = "v"
    return {"model": {"params": params}}


ORIGINAL = {
    "v1": _ldm(_SD1_UNET, 4, 0.18215),
    "inpainting": _ldm(_SD1_UNET, 9, 0.18215),
    "v2": _ldm(_SD2_UNET, 4, 0.18215, v=True),
    "inpainting_v2": _ldm(_SD2_UNET, 9, 0.18215),
    "xl_base": _ldm(_XL_UNET, 4, 0.13025, xl=True),
    "xl_refiner": _ldm(_REFINER_UNET, 4, 0.13025, xl=True),
    "xl_inpaint": _ldm(_XL_UNET, 9, 0.13025, xl=True),
}

# Each architecture's telltale keys (diffusers' CHECKPOINT_KEY_NAMES) with real shapes.
_IN = "model.diffusion_model.input_blocks.0.0.weight"
_V1 = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
_V2 = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
_XL = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
_REF = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"
HEADER_KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "v1": {_IN: (320, 4, 3, 3), _V1: (320, 640, 1, 1), _V2: (320, 768)},
    "inpainting": {_IN: (320, 9, 3, 3), _V1: (320, 640, 1, 1), _V2: (320, 768)},
    "v2": {_IN: (320, 4, 3, 3), _V1: (320, 640, 1, 1), _V2: (320, 1024)},
    "inpainting_v2": {_IN: (320, 9, 3, 3), _V1: (320, 640, 1, 1), _V2: (320, 1024)},
    "xl_base": {_IN: (320, 4, 3, 3), _XL: (1280,)},
    "xl_refiner": {_IN: (384, 4, 3, 3), _REF: (1280,)},
    "xl_inpaint": {_IN: (320, 9, 3, 3), _XL: (1280,)},
}


def header(keys: dict[str, tuple[int, ...]]) -> WeightsHeader:
    return WeightsHeader(
        Path("x.safetensors"), "safetensors", {k: TensorInfo(s, "F16") for k, s in keys.items()}
    )


def shipped(arch: str, part: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((SHIPPED_CONFIGS / arch / part / "config.json").read_text())
    return config


def meta_model(model_class: Any, config: dict[str, Any]) -> Any:
    """A model of ``config`` on the meta device (shapes, no memory)."""
    import torch

    with torch.device("meta"):
        return model_class.from_config(config)


def shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- the shipped configs ----------------------------------------------------------------


def test_shipped_architectures_are_the_ones_diffusers_maps_to_their_hub_repos() -> None:
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS as PATHS

    assert tuple(ARCHITECTURES) == ARCHS
    for name, arch in ARCHITECTURES.items():
        assert arch.hub_repo == PATHS[name]["pretrained_model_name_or_path"]
        index = json.loads((SHIPPED_CONFIGS / name / "model_index.json").read_text())
        assert index["_class_name"] == arch.pipeline, name
        for part, value in index.items():
            if isinstance(value, list) and value[0] in ("diffusers", "transformers"):
                folder = SHIPPED_CONFIGS / name / part
                assert folder.is_dir() and any(folder.iterdir()), f"{name}/{part} is missing"
        assert not list((SHIPPED_CONFIGS / name).rglob("*.safetensors")), "configs only, no weights"


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_unet_and_vae_equal_what_diffusers_derives_from_the_original_config(arch: str) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    fake = {k: info for k, info in header(HEADER_KEYS[arch]).tensors.items()}
    unet = create_unet_diffusers_config_from_ldm(ORIGINAL[arch], fake)
    vae = create_vae_diffusers_config_from_ldm(ORIGINAL[arch], fake)
    ours_unet, theirs_unet = (
        meta_model(UNet2DConditionModel, shipped(arch, "unet")),
        meta_model(UNet2DConditionModel, unet),
    )
    for key in (
        "sample_size",
        "in_channels",
        "out_channels",
        "down_block_types",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "cross_attention_dim",
        "attention_head_dim",
        "use_linear_projection",
        "transformer_layers_per_block",
        "addition_embed_type",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
    ):
        ours, theirs = ours_unet.config[key], theirs_unet.config[key]
        assert np.atleast_1d(ours).tolist() == np.atleast_1d(theirs).tolist(), (arch, key, ours, theirs)
    assert shapes(ours_unet) == shapes(theirs_unet)
    ours_vae, theirs_vae = meta_model(AutoencoderKL, shipped(arch, "vae")), meta_model(AutoencoderKL, vae)
    for key in ("sample_size", "scaling_factor", "latent_channels", "block_out_channels", "layers_per_block"):
        assert ours_vae.config[key] == theirs_vae.config[key], (arch, key)
    assert shapes(ours_vae) == shapes(theirs_vae)
    scheduler = json.loads((SHIPPED_CONFIGS / arch / "scheduler" / "scheduler_config.json").read_text())
    params = ORIGINAL[arch]["model"]["params"]
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (params["linear_start"], params["linear_end"])
    assert scheduler["beta_schedule"] == "scaled_linear" and scheduler["num_train_timesteps"] == 1000
    assert scheduler.get("prediction_type", "epsilon") == prediction_type_of(ORIGINAL[arch])


# Published parameter counts: SD 1.5 UNet 859,520,964 (diffusers' ModelMixin.num_parameters
# docstring), CLIP ViT-L text 123,060,480 and VAE 83,653,863 (many SD 1.5 parameter
# audits); SD 2.1 UNet 865,910,724 and its 23-layer OpenCLIP-H text 340,387,840; SDXL base
# UNet 2,567,463,684 and OpenCLIP-bigG text with projection 694,659,840 (SDXL audits of
# sd_xl_base_1.0); SDXL refiner UNet 2,259,526,660 and inpainting UNet 2,567,478,084 (a
# parameter table made from the Hub configs). The inpainting UNets add 5 x 320 x 3 x 3 =
# 14,400 input weights to their base.
COUNTS = {
    "v1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "inpainting": {"unet": 859_520_964 + 14_400, "vae": 83_653_863, "text_encoder": 123_060_480},
    "v2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "inpainting_v2": {"unet": 865_910_724 + 14_400, "vae": 83_653_863, "text_encoder": 340_387_840},
    "xl_base": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
    "xl_refiner": {"unet": 2_259_526_660, "vae": 83_653_863, "text_encoder_2": 694_659_840},
    "xl_inpaint": {
        "unet": 2_567_463_684 + 14_400,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
}


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_configs_build_models_of_the_published_sizes(arch: str) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    counts: dict[str, int] = {}
    with torch.device("meta"):
        for part in COUNTS[arch]:
            if part == "unet":
                model: Any = UNet2DConditionModel.from_config(shipped(arch, part))
            elif part == "vae":
                model = AutoencoderKL.from_config(shipped(arch, part))
            else:
                config = CLIPTextConfig.from_json_file(str(SHIPPED_CONFIGS / arch / part / "config.json"))
                with_projection = config.architectures == ["CLIPTextModelWithProjection"]
                assert with_projection == (part == "text_encoder_2")
                model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
            counts[part] = sum(p.numel() for p in model.parameters())
    assert counts == COUNTS[arch]


# --- tokenizers ---------------------------------------------------------------------------


def test_clip_tokenizers_are_built_from_the_shipped_bpe(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["!"], vocab["a</w>"]) == (
        49406,
        49407,
        0,
        320,
    )
    pads = {
        ("v1", "tokenizer"): 49407,  # SD 1.x pads with <|endoftext|>
        ("v2", "tokenizer"): 0,  # SD 2.x pads with "!" (id 0), as OpenCLIP does
        ("xl_base", "tokenizer"): 49407,
        ("xl_base", "tokenizer_2"): 0,
    }
    for (arch, folder), pad in pads.items():
        tokenizer = CLIPTokenizer.from_pretrained(str(materialize_configs(arch, tmp_path) / folder))
        assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, pad)
        padded = tokenizer("a cat", padding="max_length", max_length=6).input_ids
        assert padded == [49406, 320, 2368, 49407, pad, pad]
    sd1 = CLIPTokenizer.from_pretrained(str(materialize_configs("v1", tmp_path) / "tokenizer"))
    # OpenAI's / OpenCLIP's own tokenizer reads "! !! !!!" as 256, 748, 995 (diffusers#4153)
    assert sd1("! !! !!!").input_ids == [49406, 256, 748, 995, 49407]


def test_config_folders_are_complete_and_built_once(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    for arch in ARCHS:
        folder = materialize_configs(arch, tmp_path)
        assert materialize_configs(arch, tmp_path) == folder
        index = DiffusionPipeline.load_config(str(folder))
        for part, value in index.items():
            if part.startswith("tokenizer") and value[0]:
                assert (folder / part / "vocab.json").is_file() and (folder / part / "merges.txt").is_file()
    assert len(list(tmp_path.iterdir())) == len(ARCHS)  # nothing left aside


# --- detection ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_detect_names_the_architecture_as_diffusers_does(arch: str) -> None:
    detection = detect(header(HEADER_KEYS[arch]))
    assert detection.model_type == arch and detection.architecture is ARCHITECTURES[arch]


@pytest.mark.parametrize(
    ("keys", "model_type", "words"),
    [
        ({"double_blocks.0.img_attn.norm.key_norm.scale": (128,)}, "flux-schnell", "Flux.1 schnell"),
        ({"model.diffusion_model.input_blocks.10.0.skip_connection.bias": (320,)}, "upscale", "x4 upscaler"),
        ({_IN: (32, 4, 3, 3)}, "unknown", "LDM UNet of no architecture"),  # the tiny model's layout
        ({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": (4, 320)}, None, "no LDM UNet keys"),
    ],
)
def test_detect_tells_what_easel_does_not_ship(
    keys: dict[str, tuple[int, ...]], model_type: str, words: str
) -> None:
    detection = detect(header(keys))
    assert detection.model_type == model_type and detection.architecture is None
    assert words in detection.describe()


# --- tiny checkpoints, through load_pipeline -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ldm(tiny_model: Path) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model), local_files_only=True)
    return pipeline_to_ldm(pipe)


def single_spec(path: Path, config: Path | None, **fields: Any) -> ModelSpec:
    return ModelSpec(
        name="ckpt",
        source=ModelSource.SINGLE_FILE,
        location=str(path),
        config=str(config) if config else None,
        **{"family": "sd", "max_size": 512, **fields},
    )


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_converter_writes_the_original_layout(tiny_ldm: dict[str, Any], tmp_path: Path) -> None:
    # names as the SD 1.5 checkpoint (v1-5-pruned-emaonly) has them
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in tiny_ldm  # upsampler after attention
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in tiny_ldm
    assert tiny_ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in tiny_ldm
    entries = dict(sd15_parameters(SHIPPED_CONFIGS / "v1"))  # the real SD 1.x architecture
    assert len(entries) == 686 + 248 + 196  # UNet, VAE and CLIP tensors of an SD 1.5 checkpoint
    assert entries[_V1] == (320, 640, 1, 1) and entries[_IN] == (320, 4, 3, 3) and entries[_V2] == (320, 768)
    assert entries["model.diffusion_model.output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert entries["model.diffusion_model.output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert entries["model.diffusion_model.middle_block.1.proj_in.weight"] == (1280, 1280, 1, 1)
    assert entries["first_stage_model.decoder.mid.attn_1.proj_out.weight"] == (512, 512, 1, 1)
    assert entries["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias"] == (768,)
    assert detect(header(entries)).model_type == "v1"


@pytest.mark.parametrize(
    ("suffix", "half", "tolerance"),
    [(".safetensors", False, 0), (".safetensors", True, 2), (".ckpt", False, 0)],
)
def test_tiny_single_files_draw_the_folders_pixels(
    tiny_model: Path, tiny_ldm: dict[str, Any], tmp_path: Path, suffix: str, half: bool, tolerance: int
) -> None:
    import torch

    path = save_ldm(tiny_ldm, tmp_path / f"tiny{suffix}", torch.float16 if half else None)
    assert read_header(path).dtypes == ({"F16"} if half else {"F32"})
    folder_pipe = load_pipeline(
        ModelSpec(name="folder", source=ModelSource.DIRECTORY, location=str(tiny_model)), CPU
    )
    file_pipe = load_pipeline(single_spec(path, tiny_model), CPU)
    assert type(file_pipe).__name__ == "StableDiffusionPipeline"
    fields = {"width": 64, "height": 64, "steps": 3}
    expected = pixels(generate_one(folder_pipe, generation_request(seeds=(5,), **fields))[0])
    got = pixels(generate_one(file_pipe, generation_request(seeds=(5,), **fields))[0])
    assert np.abs(got - expected).max() <= tolerance
    other_seed = pixels(generate_one(folder_pipe, generation_request(seeds=(6,), **fields))[0])
    assert np.abs(other_seed - expected).max() > 10  # a tolerance that can fail


def test_tiny_inpainting_file_loads_the_inpaint_pipeline(tmp_path: Path) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    folder = ensure_tiny_model(tmp_path / "tiny-inpaint", inpainting=True)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(folder), local_files_only=True)
    path = save_ldm(pipeline_to_ldm(pipe), tmp_path / "inpaint.safetensors")
    assert detect(read_header(path)).model_type == "inpainting"
    with pytest.raises(ModelLoadError, match=r'set inpainting = true and types = \["inpaint"\]'):
        load_pipeline(single_spec(path, folder), CPU)
    spec = single_spec(path, folder, inpainting=True, types=["inpaint"])
    loaded = load_pipeline(spec, CPU)
    assert type(loaded).__name__ == "StableDiffusionInpaintPipeline"
    request = generation_request(
        type=JobType.INPAINT, image=gradient(), mask=box_mask(), strength=1.0, mask_blur=0, seeds=(2,)
    )
    expected = load_pipeline(
        ModelSpec(
            name="f", source=ModelSource.DIRECTORY, location=str(folder), inpainting=True, types=["inpaint"]
        ),
        CPU,
    )
    assert np.array_equal(
        pixels(generate_one(loaded, request)[0]), pixels(generate_one(expected, request)[0])
    )


def test_original_config_beside_the_file_is_honoured(
    tiny_model: Path, tiny_ldm: dict[str, Any], tmp_path: Path
) -> None:
    """A1111's ``model.yaml`` next to ``model.safetensors``: diffusers builds the UNet and
    VAE from it, and its ``parameterization`` sets the scheduler's prediction type."""
    path = save_ldm(tiny_ldm, tmp_path / "model.safetensors")
    plain = load_pipeline(single_spec(path, tiny_model), CPU)
    assert plain.scheduler.config.prediction_type == "epsilon" and plain.unet.config.sample_size == 32
    tiny_unet = {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "attention_resolutions": [2],
        "num_res_blocks": 2,
        "channel_mult": [1, 2],
        "num_heads": 4,
        "transformer_depth": 1,
        "context_dim": 32,
    }
    yaml_text = json.dumps(  # JSON is YAML
        {
            "model": {
                "params": {
                    "parameterization": "v",
                    "scale_factor": 0.18215,
                    "unet_config": {"params": tiny_unet},
                    "first_stage_config": {
                        "params": {
                            "ddconfig": {**_SD_VAE, "ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1}
                        }
                    },
                }
            }
        }
    )
    (tmp_path / "model.yaml").write_text(yaml_text)
    with_yaml = load_pipeline(single_spec(path, tiny_model), CPU)
    assert with_yaml.scheduler.config.prediction_type == "v_prediction"
    assert with_yaml.unet.config.sample_size == 64  # derived from the yaml, not the folder's 32
    for name, tensor in plain.unet.state_dict().items():
        assert tensor.equal(with_yaml.unet.state_dict()[name])


def write_keys(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in keys.items()}, str(path))
    return path


def test_architectures_easel_does_not_ship_fail_naming_them(tmp_path: Path, tiny_ldm: dict[str, Any]) -> None:
    flux = write_keys(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.norm.key_norm.scale": (8,)})
    with pytest.raises(ModelLoadError, match=r"Flux\.1 schnell checkpoint.*diffusers folder"):
        load_pipeline(single_spec(flux, None), CPU)
    tiny = save_ldm(tiny_ldm, tmp_path / "tiny.safetensors")  # the tiny layout is no shipped one
    with pytest.raises(ModelLoadError, match=r"LDM UNet of no architecture Easel recognises.*config = "):
        load_pipeline(single_spec(tiny, None), CPU)
    xl = write_keys(tmp_path / "xl.safetensors", HEADER_KEYS["xl_base"])
    with pytest.raises(ModelLoadError, match=r"sdxl .*declared sd .*fix family"):
        load_pipeline(single_spec(xl, None), CPU)
    refiner = write_keys(tmp_path / "refiner.safetensors", HEADER_KEYS["xl_refiner"])
    with pytest.raises(ModelLoadError, match=r'set types = \["img2img"\]'):
        load_pipeline(single_spec(refiner, None, family="sdxl"), CPU)


def test_the_family_of_a_single_file_is_read_from_its_header(tmp_path: Path) -> None:
    xl = write_keys(tmp_path / "xl.safetensors", HEADER_KEYS["xl_base"])
    spec = ModelSpec(name="xl", source=ModelSource.SINGLE_FILE, location=str(xl))
    assert spec.family is FamilyName.SDXL and spec.default_size == 1024
    v2 = write_keys(tmp_path / "v2.safetensors", HEADER_KEYS["v2"])
    assert ModelSpec(name="v2", source=ModelSource.SINGLE_FILE, location=str(v2)).family is FamilyName.SD
    other = write_keys(tmp_path / "other.safetensors", {"some.weight": (2, 2)})
    with pytest.raises(
        ValueError, match=r"other\.safetensors holds no checkpoint architecture.*set family ="
    ):
        ModelSpec(name="other", source=ModelSource.SINGLE_FILE, location=str(other))


# --- the real SD 1.x architecture with random weights: nothing else needed ----------------

_NOTHING_ELSE = """
import json, sys
import huggingface_hub.constants as hub
from easel.shared.registry import ModelSource, ModelSpec
from easel.worker.engine.device import DevicePlan
from easel.worker.engine.pipelines import load_pipeline
from tests.factories import generate_one, generation_request

spec = ModelSpec(name="random-sd15", source=ModelSource.SINGLE_FILE, location=sys.argv[1])
pipe = load_pipeline(spec, DevicePlan("cpu", "float32"))
image = generate_one(pipe, generation_request(seeds=(3,), width=64, height=64, steps=2))[0]
print(json.dumps({
    "family": spec.family.value, "config": spec.config, "pipeline": type(pipe).__name__,
    "size": list(image.size), "colours": len(set(image.getdata())),
    "hub_endpoint": hub.ENDPOINT, "hub_offline": hub.HF_HUB_OFFLINE,
    "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
}))
"""


@pytest.mark.slow
def test_a_real_sd15_file_needs_nothing_else(tmp_path: Path) -> None:
    checkpoint = ensure_random_sd15(SHIPPED_CONFIGS / "v1")
    assert 2_000_000_000 < checkpoint.stat().st_size < 2_300_000_000
    with hub_recorder() as hub:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": hub.url,
            "EASEL_HOME": str(tmp_path / "home"),
            "HF_HOME": str(tmp_path / "hf-home"),  # an empty Hugging Face cache
            "PYTHONPATH": str(REPO),
        }
        done = subprocess.run(
            [sys.executable, "-c", _NOTHING_ELSE, str(checkpoint)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert hub.requests == []
    assert result["hub_endpoint"] == hub.url and result["hub_offline"] is True
    assert (result["family"], result["config"], result["pipeline"]) == ("sd", None, "StableDiffusionPipeline")
    assert result["unet_parameters"] == 859_520_964
    assert result["size"] == [64, 64] and result["colours"] > 1
    configs = tmp_path / "home" / "models" / ".single-file-configs"
    assert [p.name.split("-")[0] for p in configs.iterdir()] == ["v1"]
