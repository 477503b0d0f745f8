"""What a weights file is, from its header alone (easel.shared.classify): checkpoint
architectures as diffusers names them, LoRA formats and bases, embeddings, VAEs,
ControlNets and text encoders, read from files written the way real ones are."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from easel.shared.classify import (
    Classification,
    Kind,
    checkpoint_architecture,
    classify,
    fits,
    infer_architecture,
)
from easel.shared.families import FamilyName
from easel.shared.weights_header import WeightsHeader, read_header
from tests.model_files import (
    CHECKPOINTS,
    checkpoint,
    clip_text,
    controlnet,
    embedding,
    lora,
    t5_encoder,
    vae,
    write_a1111_embedding,
    write_ckpt,
    write_safetensors,
)

SD, SDXL, SD3, FLUX = FamilyName.SD, FamilyName.SDXL, FamilyName.SD3, FamilyName.FLUX

FAMILIES: dict[str, FamilyName | None] = {
    "v1": SD,
    "v2": SD,
    "inpainting": SD,
    "inpainting_v2": SD,
    "instruct-pix2pix": None,
    "upscale": None,
    "xl_base": SDXL,
    "xl_refiner": SDXL,
    "xl_inpaint": SDXL,
    "playground-v2-5": SDXL,
    "sd3": SD3,
    "sd35_medium": SD3,
    "sd35_large": SD3,
    "flux-dev": FLUX,
    "flux-schnell": FLUX,
    "flux-fill": FLUX,
    "flux-depth": None,
}


def header_of(
    tmp_path: Path, table: Mapping[str, tuple[tuple[int, ...], str]], name: str = "m"
) -> WeightsHeader:
    return read_header(write_safetensors(tmp_path / f"{name}.safetensors", table))


def test_every_built_architecture_has_an_expected_family() -> None:
    assert set(FAMILIES) == set(CHECKPOINTS)


@pytest.mark.parametrize("architecture", CHECKPOINTS)
def test_checkpoint_architecture_agrees_with_diffusers(tmp_path: Path, architecture: str) -> None:
    """The same tensors (read back from the file, shapes as written) given to diffusers'
    own ``infer_diffusers_model_type`` name the same architecture."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    header = header_of(tmp_path, checkpoint(architecture))
    assert infer_diffusers_model_type(header.tensors) == architecture
    assert checkpoint_architecture(header) == (architecture, FAMILIES[architecture])


@pytest.mark.parametrize("architecture", ["sd3", "sd35_large", "flux-dev", "flux-schnell", "flux-fill"])
@pytest.mark.parametrize("unprefixed", [False, True])
def test_a_bare_transformer_agrees_with_diffusers(
    tmp_path: Path, architecture: str, unprefixed: bool
) -> None:
    """ComfyUI's diffusion_models/ files: the transformer alone, with or without the
    ``model.diffusion_model.`` prefix."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    header = header_of(tmp_path, checkpoint(architecture, bare=True, unprefixed=unprefixed))
    assert infer_diffusers_model_type(header.tensors) == architecture
    found = classify(header)
    assert (found.kind, found.architecture, found.components) == (
        Kind.CHECKPOINT,
        architecture,
        ("transformer",),
    )


@pytest.mark.parametrize(
    ("architecture", "unprefixed"), [("xl_base", False), ("xl_base", True), ("xl_refiner", True)]
)
def test_a_bare_sdxl_unet_is_read_by_its_own_keys_where_diffusers_guesses_v1(
    tmp_path: Path, architecture: str, unprefixed: bool
) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    header = header_of(tmp_path, checkpoint(architecture, bare=True, unprefixed=unprefixed))
    assert infer_diffusers_model_type(header.tensors) == "v1"  # it looks for SDXL's text encoders
    assert checkpoint_architecture(header) == (architecture, SDXL)
    assert classify(header).components == ("unet",)


def test_a_bare_sd1_unet_is_v1_as_diffusers_says(tmp_path: Path) -> None:
    header = header_of(tmp_path, checkpoint("v1", bare=True, unprefixed=True))
    assert checkpoint_architecture(header) == ("v1", SD)


def test_tensors_of_no_known_model_are_none_where_diffusers_guesses_v1(tmp_path: Path) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    table = {"encoder.layers.0.weight": ((8, 8), "F32"), "head.weight": ((2, 8), "F32")}
    header = header_of(tmp_path, table)
    assert infer_diffusers_model_type(header.tensors) == "v1"
    assert checkpoint_architecture(header) == (None, None)
    found = classify(header)
    assert found.kind is None
    assert (
        found.problem
        == "not a model Easel knows: no known layout in its 2 tensors (first: 'encoder.layers.0.weight')"
    )


def test_infer_architecture_takes_any_mapping_of_shapes() -> None:
    class Shaped:
        def __init__(self, *shape: int) -> None:
            self.shape = shape

    tensors = {key: Shaped(*shape) for key, (shape, _) in checkpoint("inpainting").items()}
    assert infer_architecture(tensors) == "inpainting"


@pytest.mark.parametrize(
    ("architecture", "components"),
    [
        ("v1", ("unet", "vae", "text_encoder")),
        ("v2", ("unet", "vae", "text_encoder")),
        ("xl_base", ("unet", "vae", "text_encoder", "text_encoder_2")),
        ("xl_refiner", ("unet", "vae", "text_encoder_2")),
        ("sd3", ("transformer", "vae", "text_encoder", "text_encoder_2")),
        ("flux-dev", ("transformer", "vae", "text_encoder", "text_encoder_2")),
    ],
)
def test_a_checkpoint_says_which_pipeline_components_it_holds(
    tmp_path: Path, architecture: str, components: tuple[str, ...]
) -> None:
    found = classify(header_of(tmp_path, checkpoint(architecture)))
    assert (found.kind, found.format, found.components) == (Kind.CHECKPOINT, "ldm", components)


def test_a_ckpt_reads_as_its_safetensors_twin(tmp_path: Path) -> None:
    """A1111's .ckpt (torch zip, Lightning's ``state_dict``) and the same table as
    .safetensors classify alike."""
    table = checkpoint("v2")
    from_ckpt = classify(read_header(write_ckpt(tmp_path / "m.ckpt", table)))
    assert from_ckpt == classify(header_of(tmp_path, table))
    assert from_ckpt.architecture == "v2"


def test_architectures_no_family_serves_say_so(tmp_path: Path) -> None:
    found = classify(header_of(tmp_path, checkpoint("upscale")))
    assert (found.kind, found.family, found.families) == (Kind.CHECKPOINT, None, ())
    assert found.problem == "a upscale checkpoint (as diffusers names it): no Easel model family serves it"


def test_a_v_pred_key_marks_v_prediction(tmp_path: Path) -> None:
    table = checkpoint("v2")
    assert classify(header_of(tmp_path, table)).prediction is None
    table["v_pred"] = ((), "F32")
    assert classify(header_of(tmp_path, table, "v")).prediction == "v_prediction"


# --- LoRAs ------------------------------------------------------------------------------------

LORA_CASES = [
    # base, format written, format read, architecture, family, base read
    ("sd1", "kohya", "kohya", "v1", SD, "sd1"),
    ("sd2", "kohya", "kohya", "v2", SD, "sd2"),
    ("sdxl", "kohya", "kohya", "xl_base", SDXL, "sdxl"),
    ("sd1", "diffusers", "diffusers", "v1", SD, "sd1"),
    ("sdxl", "diffusers", "diffusers", "xl_base", SDXL, "sdxl"),
    ("sd1", "diffusers-old", "diffusers", "v1", SD, "sd1"),
    ("sd2", "peft", "peft", "v2", SD, "sd2"),
    ("sdxl", "peft", "peft", "xl_base", SDXL, "sdxl"),
    ("flux", "kohya", "kohya", "flux-dev", FLUX, "flux"),
    ("flux", "diffusers", "diffusers", "flux-dev", FLUX, "flux"),
    ("flux", "ldm", "ldm", "flux-dev", FLUX, "flux"),
    ("sd3", "kohya", "kohya", "sd3", SD3, "sd3-medium"),
    ("sd3", "diffusers", "diffusers", "sd3", SD3, "sd3-medium"),
    ("sd35_large", "diffusers", "diffusers", "sd35_large", SD3, "sd3.5-large"),
]


@pytest.mark.parametrize(("base", "written", "fmt", "architecture", "family", "read_base"), LORA_CASES)
def test_a_lora_names_its_format_and_base(
    tmp_path: Path, base: str, written: str, fmt: str, architecture: str, family: FamilyName, read_base: str
) -> None:
    found = classify(header_of(tmp_path, lora(base, written)))
    assert found == Classification(
        Kind.LORA, architecture=architecture, family=family, families=(family,), base=read_base, format=fmt
    )


@pytest.mark.parametrize(("base", "architecture"), [("sd1", "v1"), ("sd2", "v2"), ("sdxl", "xl_base")])
def test_a_lora_of_the_text_encoder_alone_is_told_by_its_width_or_prefix(
    tmp_path: Path, base: str, architecture: str
) -> None:
    table = {k: v for k, v in lora(base).items() if k.startswith("lora_te")}
    assert classify(header_of(tmp_path, table)).architecture == architecture


def test_an_sdxl_lora_without_cross_attention_is_told_by_its_deep_blocks(tmp_path: Path) -> None:
    table = {k: v for k, v in lora("sdxl", "diffusers", text_encoder=False).items() if "attn2" not in k}
    assert classify(header_of(tmp_path, table)).architecture == "xl_base"


def test_a_v2_lora_does_not_fit_a_v1_model(tmp_path: Path) -> None:
    v1 = classify(header_of(tmp_path, checkpoint("v1"), "v1"))
    inpainting = classify(header_of(tmp_path, checkpoint("inpainting"), "inpainting"))
    v2_lora = classify(header_of(tmp_path, lora("sd2"), "v2-lora"))
    v1_lora = classify(header_of(tmp_path, lora("sd1"), "v1-lora"))
    assert v1.family == v2_lora.family == SD
    assert not fits(v2_lora, v1)
    assert fits(v1_lora, v1) and fits(v1_lora, inpainting)


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("loha", "a LoHa (LyCORIS): diffusers' load_lora_weights reads LoRA (up/down) matrices only"),
        (
            "lokr",
            "a LoKr (LyCORIS): diffusers loads LoKr for Z-Image and Flux.2 only, which Easel does not serve",
        ),
    ],
)
def test_lycoris_files_are_loras_easel_cannot_load(tmp_path: Path, written: str, why: str) -> None:
    found = classify(header_of(tmp_path, lora("sd1", written)))
    assert (found.kind, found.format, found.problem) == (Kind.LORA, "lycoris", why)


def test_a_dora_says_it_would_not_draw_as_trained(tmp_path: Path) -> None:
    table = lora("sd1")
    table["lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale"] = ((1, 320), "F16")
    found = classify(header_of(tmp_path, table))
    assert found.kind is Kind.LORA
    assert (
        found.problem
        == "a DoRA (dora_scale): diffusers drops its magnitude vectors; it would not draw as trained"
    )


def test_a_lora_of_another_width_fits_the_models_of_that_width(tmp_path: Path) -> None:
    """An SD-shaped UNet of a width no released model has (one trained from scratch, the
    tests' tiny ones): family sd, and a base that only models of the same width share."""
    table = {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": ((4, 512), "F16")
    }
    table["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"] = (
        (1280, 4),
        "F16",
    )
    found = classify(header_of(tmp_path, table))
    assert (found.kind, found.architecture, found.families, found.base) == (
        Kind.LORA,
        None,
        (FamilyName.SD,),
        "unet-512",
    )
    assert found.problem is None and fits(found, Classification(Kind.DIFFUSERS, base="unet-512"))
    assert not fits(found, Classification(Kind.CHECKPOINT, architecture="v1", base="sd1"))


# --- embeddings, VAEs, ControlNets, text encoders ------------------------------------------------


@pytest.mark.parametrize(
    ("table", "fmt", "architecture", "vectors"),
    [
        (embedding("a1111", width=768, vectors=3), "a1111", "v1", 3),
        (embedding("a1111", width=1024, vectors=8), "a1111", "v2", 8),
        (embedding("sdxl", vectors=2), "sdxl", "xl_base", 2),
        (embedding("diffusers", width=768), "diffusers", "v1", 1),
    ],
)
def test_an_embedding_names_its_base_and_vector_count(
    tmp_path: Path,
    table: Mapping[str, tuple[tuple[int, ...], str]],
    fmt: str,
    architecture: str,
    vectors: int,
) -> None:
    found = classify(header_of(tmp_path, table))
    assert (found.kind, found.format, found.architecture, found.vectors) == (
        Kind.EMBEDDING,
        fmt,
        architecture,
        vectors,
    )
    assert found.problem is None


def test_an_a1111_pt_embedding(tmp_path: Path) -> None:
    found = classify(read_header(write_a1111_embedding(tmp_path / "e.pt", width=1024, vectors=5)))
    assert (found.kind, found.format, found.architecture, found.base, found.vectors) == (
        Kind.EMBEDDING,
        "a1111",
        "v2",
        "sd2",
        5,
    )


def test_an_embedding_of_another_width_fits_the_models_of_that_width(tmp_path: Path) -> None:
    found = classify(header_of(tmp_path, embedding("a1111", width=512)))
    assert (found.kind, found.family, found.base, found.problem) == (
        Kind.EMBEDDING,
        FamilyName.SD,
        "unet-512",
        None,
    )


@pytest.mark.parametrize(
    ("prefix", "layout", "latent", "families"),
    [
        ("", "ldm", 4, (SD, SDXL)),
        ("first_stage_model.", "ldm", 4, (SD, SDXL)),
        ("", "diffusers", 4, (SD, SDXL)),
        ("", "ldm", 16, (SD3, FLUX)),
        ("vae.", "diffusers", 16, (SD3, FLUX)),
    ],
)
def test_a_vae_names_the_families_its_latent_channels_fit(
    tmp_path: Path, prefix: str, layout: str, latent: int, families: tuple[FamilyName, ...]
) -> None:
    found = classify(header_of(tmp_path, vae(prefix, latent=latent, layout=layout)))
    assert found == Classification(Kind.VAE, families=families, format=layout, latent_channels=latent)


def test_a_vae_of_other_latent_channels_fits_no_family(tmp_path: Path) -> None:
    found = classify(header_of(tmp_path, vae("", latent=32)))
    assert (found.kind, found.families) == (Kind.VAE, ())
    assert found.problem == "a VAE of 32 latent channels: no Easel model family uses it"


def test_a_vae_fits_every_model_of_its_families_and_no_other(tmp_path: Path) -> None:
    sd_vae = classify(header_of(tmp_path, vae(""), "vae"))
    models = {
        a: classify(header_of(tmp_path, checkpoint(a), a))
        for a in ("v1", "v2", "xl_base", "xl_refiner", "sd3")
    }
    assert {a for a, model in models.items() if fits(sd_vae, model)} == {"v1", "v2", "xl_base", "xl_refiner"}


@pytest.mark.parametrize(
    ("base", "fmt", "architecture", "family"),
    [
        ("sd1", "ldm", "v1", SD),
        ("sd2", "ldm", "v2", SD),
        ("sdxl", "ldm", "xl_base", SDXL),
        ("sd1", "diffusers", "v1", SD),
        ("sdxl", "diffusers", "xl_base", SDXL),
    ],
)
def test_a_controlnet_names_its_base(
    tmp_path: Path, base: str, fmt: str, architecture: str, family: FamilyName
) -> None:
    found = classify(header_of(tmp_path, controlnet(base, fmt)))
    assert (found.kind, found.format, found.architecture, found.family) == (
        Kind.CONTROLNET,
        fmt,
        architecture,
        family,
    )
    assert found.problem is None


def test_a_control_lora_is_a_controlnet_easel_cannot_load(tmp_path: Path) -> None:
    table = {**controlnet("sdxl", "diffusers"), "lora_controlnet": ((0,), "F32")}
    found = classify(header_of(tmp_path, table))
    assert (found.kind, found.format) == (Kind.CONTROLNET, "control-lora")
    assert found.problem is not None and "Control-LoRA" in found.problem


@pytest.mark.parametrize(
    ("table", "architecture", "families"),
    [
        (clip_text(""), "clip_l", (SD3, FLUX)),
        (clip_text("", 1280, 32, projection=True), "clip_g", (SD3,)),
        (t5_encoder(layers=2), "t5xxl", (SD3, FLUX)),
    ],
)
def test_a_text_encoder_names_itself(
    tmp_path: Path,
    table: Mapping[str, tuple[tuple[int, ...], str]],
    architecture: str,
    families: tuple[FamilyName, ...],
) -> None:
    found = classify(header_of(tmp_path, table))
    assert (found.kind, found.architecture, found.families, found.problem) == (
        Kind.TEXT_ENCODER,
        architecture,
        families,
        None,
    )


def test_classification_imports_no_model_library() -> None:
    """The web tier classifies files too: neither torch, diffusers nor transformers."""
    code = (
        "import sys, easel.shared.classify, easel.shared.catalog, easel.shared.catalog_read\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'safetensors') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
