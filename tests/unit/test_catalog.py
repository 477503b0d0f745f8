"""The models catalog (easel.shared.catalog): every layout people keep models in, the
names files get, collisions, why files are unavailable, and rescans that read nothing
that did not change."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import easel.shared.catalog_read as catalog_read
from easel.shared.catalog import (
    MAX_NAME_LENGTH,
    Catalog,
    Entry,
    Layout,
    Status,
    detect_layout,
    safe_name,
    scan,
)
from easel.shared.classify import Kind
from easel.shared.families import FamilyName
from tests.model_files import (
    a1111_models,
    checkpoint,
    comfyui_models,
    diffusers_pipeline,
    embedding,
    hub_model,
    lora,
    vae,
    write_ckpt,
    write_safetensors,
)


def listed(catalog: Catalog) -> dict[tuple[str | None, str], Entry]:
    return {(e.kind.value if e.kind else None, e.name): e for e in catalog.entries}


def summary(entry: Entry) -> tuple[str, str | None, str | None]:
    return (entry.status.value, entry.architecture, entry.family.value if entry.family else None)


# --- layouts ------------------------------------------------------------------------------------


def test_an_a1111_models_folder(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    catalog = scan([files["models"]])
    assert catalog.roots[0].layout is Layout.A1111
    found = {key: summary(e) for key, e in listed(catalog).items()}
    assert found == {
        ("checkpoint", "sd15"): ("available", "v1", "sd"),
        ("checkpoint", "sdxl_base"): ("available", "xl_base", "sdxl"),
        ("checkpoint", "v2/sd21-768"): ("available", "v2", "sd"),
        ("lora", "watercolor"): ("available", "v1", "sd"),
        ("lora", "xl/pixel art"): ("available", "xl_base", "sdxl"),
        ("lora", "loha-style"): ("unavailable", None, None),
        ("vae", "vae-ft-mse"): ("available", None, None),
        ("controlnet", "control_canny"): ("available", "v1", "sd"),
        ("embedding", "bad-hands"): ("available", "v1", "sd"),  # embeddings/ beside models/
        ("upscaler", "4x-sharp"): ("available", None, None),  # ESRGAN/: the folder tells
    }
    entries = listed(catalog)
    assert entries[("checkpoint", "v2/sd21-768")].original_config == files["sd21_yaml"]
    assert entries[("checkpoint", "sd15")].original_config is None
    assert entries[("lora", "loha-style")].reason == (
        "a LoHa (LyCORIS): diffusers' load_lora_weights reads LoRA (up/down) matrices only"
    )
    assert entries[("vae", "vae-ft-mse")].families == (FamilyName.SD, FamilyName.SDXL)
    assert catalog.problems == ()


def test_the_webui_folder_reads_as_its_models_folder(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    by_models, by_webui = scan([files["models"]]), scan([tmp_path / "webui"])
    assert [e.to_dict() | {"root": None} for e in by_models.entries] == [
        e.to_dict() | {"root": None} for e in by_webui.entries
    ]
    assert by_webui.roots[0].layout is Layout.A1111


def test_a1111_embeddings_folder_on_its_own(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    catalog = scan([tmp_path / "webui" / "embeddings"])
    assert catalog.roots[0].layout is Layout.EMBEDDINGS
    assert [(e.kind, e.name, e.path) for e in catalog.entries] == [
        (Kind.EMBEDDING, "bad-hands", files["embedding"])
    ]


def test_a_comfyui_models_folder_with_flux_split(tmp_path: Path) -> None:
    files = comfyui_models(tmp_path / "ComfyUI" / "models")
    catalog = scan([tmp_path / "ComfyUI"])  # the ComfyUI folder reads as its models folder
    assert catalog.roots[0].layout is Layout.COMFYUI
    entries = listed(catalog)
    assert {key: summary(e) for key, e in entries.items()} == {
        ("checkpoint", "sd15"): ("available", "v1", "sd"),
        ("checkpoint", "flux1-dev"): ("available", "flux-dev", "flux"),
        ("diffusers", "sd15-diffusers"): ("available", "v1", "sd"),
        ("lora", "flux-style"): ("available", "flux-dev", "flux"),
        ("vae", "ae"): ("available", None, None),
        ("embedding", "neg"): ("available", "v1", "sd"),
        ("controlnet", "canny-xl"): ("available", "xl_base", "sdxl"),
        ("text_encoder", "clip_l"): ("available", "clip_l", None),
        ("text_encoder", "t5xxl_fp16"): ("available", "t5xxl", None),
        ("upscaler", "4x-sharp"): ("available", None, None),  # upscale_models/
    }
    flux = entries[("checkpoint", "flux1-dev")]
    assert (flux.path, flux.classification.components) == (files["flux"], ("transformer",))
    assert entries[("vae", "ae")].families == (FamilyName.SD3, FamilyName.FLUX)
    assert entries[("diffusers", "sd15-diffusers")].path == files["pipeline"]


def test_checkpoints_and_pipelines_may_share_folders(tmp_path: Path) -> None:
    """A diffusers folder in checkpoints/, a single file in ComfyUI's diffusers/: each is
    what it is, and a ComfyUI folder with no checkpoints/ still reads as ComfyUI."""
    comfy = tmp_path / "ComfyUI"
    diffusers_pipeline(comfy / "models" / "loras" / "not-a-lora", unet={"cross_attention_dim": 768})
    write_safetensors(comfy / "models" / "diffusers" / "single.safetensors", checkpoint("v1"))
    write_safetensors(comfy / "models" / "loras" / "style.safetensors", lora("sd1"))
    (comfy / "custom_nodes" / "node").mkdir(parents=True)
    (comfy / "custom_nodes" / "node" / "weights.pt").write_bytes(b"not scanned")
    catalog = scan([comfy])
    assert catalog.roots[0].layout is Layout.COMFYUI
    assert {(e.kind, e.name, e.status) for e in catalog.entries} == {
        (Kind.CHECKPOINT, "single", Status.AVAILABLE),
        (Kind.LORA, "style", Status.AVAILABLE),
        (Kind.LORA, "not-a-lora", Status.UNAVAILABLE),
    }
    models = tmp_path / "models"
    diffusers_pipeline(models / "Stable-diffusion" / "pipeline", unet={"cross_attention_dim": 1024})
    entry = scan([models]).entries[0]
    assert (entry.kind, entry.name, entry.architecture, entry.available) == (
        Kind.DIFFUSERS,
        "pipeline",
        "v2",
        True,
    )


def test_a_hugging_face_cache(tmp_path: Path) -> None:
    hub = tmp_path / "huggingface" / "hub"
    hub_model(hub, "stabilityai/stable-diffusion-2-1-base")
    hub_model(hub, "black-forest-labs/FLUX.1-schnell", "FluxPipeline")
    (hub / "models--openai--clip-vit-large-patch14" / "snapshots" / "abc").mkdir(parents=True)  # no pipeline
    (hub / "datasets--some--data").mkdir()
    for root in (hub, tmp_path / "huggingface"):  # HF_HUB_CACHE or HF_HOME
        catalog = scan([root])
        assert catalog.roots[0].layout is Layout.HUB
        assert [(e.kind, e.name, e.family, e.status) for e in catalog.entries] == [
            (Kind.DIFFUSERS, "black-forest-labs/FLUX.1-schnell", FamilyName.FLUX, Status.AVAILABLE),
            (Kind.DIFFUSERS, "stabilityai/stable-diffusion-2-1-base", FamilyName.SD, Status.AVAILABLE),
        ]


def test_a_hub_fingerprint_follows_the_blobs(tmp_path: Path) -> None:
    snapshot = hub_model(tmp_path / "hub", "org/model")
    before = scan([tmp_path / "hub"]).entries[0].fingerprint
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    blob = weights.resolve()
    new_blob = blob.with_name("f" * 64)
    new_blob.write_bytes(b"")
    weights.unlink()
    weights.symlink_to(os.path.relpath(new_blob, weights.parent))
    assert scan([tmp_path / "hub"]).entries[0].fingerprint != before


def test_an_interrupted_download_is_unavailable(tmp_path: Path) -> None:
    diffusers_pipeline(tmp_path / "models" / "partial", weights=False)
    entry = scan([tmp_path / "models"]).entries[0]
    assert (entry.kind, entry.name, entry.status) == (Kind.DIFFUSERS, "partial", Status.UNAVAILABLE)
    assert entry.reason == "incomplete: no weights or folder for unet (an interrupted download?)"


def test_a_pipeline_class_no_family_serves_is_unavailable(tmp_path: Path) -> None:
    diffusers_pipeline(tmp_path / "models" / "video", "WanPipeline")
    entry = scan([tmp_path / "models"]).entries[0]
    assert entry.status is Status.UNAVAILABLE
    assert (
        entry.reason is not None
        and "names pipeline 'WanPipeline', which no Easel model family serves" in entry.reason
    )


def test_a_plain_folder_is_classified_by_keys(tmp_path: Path) -> None:
    models = tmp_path / "mine"
    write_safetensors(models / "a" / "model.safetensors", checkpoint("xl_base"))
    write_safetensors(models / "a" / "style.safetensors", lora("sdxl"))
    write_safetensors(models / "vae.safetensors", vae(""))
    write_safetensors(models / "emb.safetensors", embedding("sdxl"))
    write_ckpt(models / "old.ckpt", checkpoint("v1"))
    diffusers_pipeline(models / "deep" / "sd15", unet={"cross_attention_dim": 768, "in_channels": 9})
    (models / "optimizer.bin").write_bytes(b"not a zip")
    (models / "notes.txt").write_text("ignored: not a weights suffix")
    (models / "preview.png").write_bytes(b"\x89PNG")
    catalog = scan([models])
    assert catalog.roots[0].layout is Layout.FOLDER
    found = {
        (e.kind.value if e.kind else None, e.name, e.status.value, e.architecture) for e in catalog.entries
    }
    assert found == {
        ("checkpoint", "a/model", "available", "xl_base"),
        ("checkpoint", "old", "available", "v1"),
        ("diffusers", "deep/sd15", "available", "inpainting"),
        ("lora", "a/style", "available", "xl_base"),
        ("vae", "vae", "available", None),
        ("embedding", "emb", "available", "xl_base"),
        (None, "optimizer", "unavailable", None),
    }
    junk = next(e for e in catalog.entries if e.kind is None)
    assert junk.reason is not None and junk.reason.startswith("optimizer.bin: not a PyTorch zip checkpoint")


def test_diffusers_controlnet_and_vae_folders(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for name, config in {
        "controlnet/canny": {"_class_name": "ControlNetModel", "cross_attention_dim": 768},
        "controlnet/depth-xl": {"_class_name": "ControlNetModel", "cross_attention_dim": 2048},
        "vae/sdxl-vae": {"_class_name": "AutoencoderKL", "latent_channels": 4},
    }.items():
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text(json.dumps(config))
        (models / name / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    catalog = scan([models])
    assert catalog.roots[0].layout is Layout.COMFYUI
    assert [(e.kind, e.name, e.architecture, e.families, e.format) for e in catalog.entries] == [
        (Kind.VAE, "sdxl-vae", None, (FamilyName.SD, FamilyName.SDXL), "diffusers"),
        (Kind.CONTROLNET, "canny", "v1", (FamilyName.SD,), "diffusers"),
        (Kind.CONTROLNET, "depth-xl", "xl_base", (FamilyName.SDXL,), "diffusers"),
    ]


def test_a_missing_root_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    catalog = scan([tmp_path / "nowhere"])
    assert catalog.roots[0].layout is Layout.MISSING
    assert [(p.path, p.message) for p in catalog.problems] == [
        (tmp_path / "nowhere", "not a readable folder: nothing scanned there")
    ]
    assert detect_layout(tmp_path / "nowhere") is Layout.MISSING


def test_an_unreadable_folder_is_a_problem_and_the_rest_is_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Tests run as root, who reads any folder: the refusal is made by hand.)"""
    files = a1111_models(tmp_path / "webui")
    locked = files["lora"].parent
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    catalog = scan([files["models"]])
    assert [(p.path, p.message) for p in catalog.problems] == [
        (locked, "cannot read folder: Permission denied")
    ]
    assert [e.name for e in catalog.of_kind(Kind.LORA, available=False)] == ["loha-style"]  # LyCORIS/
    assert [e.name for e in catalog.of_kind(Kind.CHECKPOINT)] == ["sd15", "sdxl_base", "v2/sd21-768"]


# --- unavailable files ------------------------------------------------------------------------


def write_truncated(path: Path) -> Path:
    write_safetensors(path, checkpoint("v1"))
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the header whole, the weights not
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (write_truncated, "holds {size} bytes but its header describes"),
        (lambda p: p.write_bytes(b""), "too short for a safetensors file (0 bytes)"),
        (
            lambda p: p.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{not json}" + b" " * 30),
            "header is not JSON",
        ),
        (lambda p: p.write_bytes(b"<html>404 Not Found</html>"), "header length"),
    ],
)
def test_a_partial_or_corrupt_file_is_unavailable_with_its_reason(
    tmp_path: Path, make: Any, reason: str
) -> None:
    path = tmp_path / "models" / "Stable-diffusion" / "broken.safetensors"
    path.parent.mkdir(parents=True)
    make(path)
    write_safetensors(path.with_name("fine.safetensors"), checkpoint("v1"))
    catalog = scan([tmp_path / "models"])
    entries = listed(catalog)
    broken = entries[("checkpoint", "broken")]
    assert broken.status is Status.UNAVAILABLE
    assert broken.reason is not None and reason.format(size=path.stat().st_size) in broken.reason
    assert entries[("checkpoint", "fine")].available


def test_a_legacy_ckpt_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "models" / "Stable-diffusion" / "old.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x02}q\x00.")  # a pre-1.6 torch pickle, not a zip
    entry = scan([tmp_path / "models"]).entries[0]
    assert entry.reason is not None and "legacy pre-1.6 format" in entry.reason


def test_a_file_whose_keys_contradict_its_folder_is_unavailable(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_safetensors(models / "checkpoints" / "oops.safetensors", lora("sd1"))
    write_safetensors(models / "loras" / "big.safetensors", checkpoint("v1"))
    entries = listed(scan([models]))
    assert entries[("checkpoint", "oops")].reason == (
        "its keys say a LoRA (v1, kohya), but it is in checkpoints/, the checkpoint folder: move it to loras/"
    )
    assert entries[("lora", "big")].reason == (
        "its keys say a checkpoint (v1, ldm), but it is in loras/, the lora folder: move it to checkpoints/"
    )
    assert entries[("checkpoint", "oops")].classification.kind is Kind.LORA


def test_a1111_vae_beside_its_checkpoint_is_a_vae(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_safetensors(models / "Stable-diffusion" / "model.safetensors", checkpoint("v1"))
    write_safetensors(models / "Stable-diffusion" / "model.vae.safetensors", vae(""))
    entries = listed(scan([models]))
    assert entries[("vae", "model.vae")].available
    assert entries[("checkpoint", "model")].available


def test_gguf_is_listed_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "models" / "unet" / "flux1-dev-Q4_K_S.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + bytes(60))
    entry = scan([tmp_path / "models"]).entries[0]
    assert (entry.kind, entry.name, entry.reason) == (
        Kind.CHECKPOINT,
        "flux1-dev-Q4_K_S",
        "GGUF (quantised) weights: Easel does not load them",
    )


def test_controlnets_of_families_easel_does_not_serve_them_for_are_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "controlnet" / "flux-canny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "FluxControlNetModel"}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    entry = scan([tmp_path / "models"]).entries[0]
    assert entry.reason == "a flux ControlNet: Easel serves ControlNets of sd, sdxl only"


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "name"),
    [
        ("sub/name", "sub/name"),
        ("My  Style\tv2", "My Style v2"),
        ("a:b<c>d", "a_b_c_d"),
        ("what?#100%", "what__100_"),
        (' "quoted"|*', "_quoted___"),
        ("  .hidden. ", "hidden"),
        ("..", "_"),
        ("Cafe\u0301", "Caf\u00e9"),  # NFC
        ("x/\x07bell", "x/_bell"),
    ],
)
def test_names_are_safe_in_urls_and_lora_tags(relative: str, name: str) -> None:
    assert safe_name(relative) == name


def test_names_come_from_paths_without_suffixes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_safetensors(models / "Lora" / "people" / "Jane: Doe <v2>.safetensors", lora("sd1"))
    write_safetensors(
        models / "Lora" / "folder-lora" / "pytorch_lora_weights.safetensors", lora("sd1", "diffusers")
    )
    write_safetensors(models / "Lora" / ("x" * (MAX_NAME_LENGTH + 1) + ".safetensors"), lora("sd1"))
    entries = listed(scan([models]))
    assert entries[("lora", "people/Jane_ Doe _v2_")].available
    assert entries[("lora", "folder-lora")].format == "diffusers"
    long = entries[("lora", "x" * (MAX_NAME_LENGTH + 1))]
    assert (
        long.reason
        == f"its name is {MAX_NAME_LENGTH + 1} characters long; names have at most {MAX_NAME_LENGTH}"
    )


def test_collisions_within_a_folder_prefer_safetensors_and_report_the_loser(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "Stable-diffusion"
    ckpt = write_ckpt(folder / "model.ckpt", checkpoint("v1"))
    kept = write_safetensors(folder / "model.safetensors", checkpoint("v1"))
    catalog = scan([tmp_path / "models"])
    assert [(e.name, e.path) for e in catalog.entries] == [("model", kept)]
    assert [(p.path, p.other, p.message) for p in catalog.problems] == [
        (ckpt, kept, f"name 'model' is taken by {str(kept)!r}: this file is not listed")
    ]


def test_collisions_across_roots_prefer_the_earlier_root_and_available_files(tmp_path: Path) -> None:
    first = write_safetensors(tmp_path / "one" / "Lora" / "style.safetensors", lora("sd1"))
    second = write_safetensors(tmp_path / "two" / "loras" / "style.safetensors", lora("sdxl"))
    catalog = scan([tmp_path / "one", tmp_path / "two"])
    assert [(e.name, e.path) for e in catalog.entries] == [("style", first)]
    assert [(p.path, p.other) for p in catalog.problems] == [(second, first)]
    catalog = scan([tmp_path / "two", tmp_path / "one"])
    assert [(e.name, e.path) for e in catalog.entries] == [("style", second)]
    first.write_bytes(b"")  # broken: the working file keeps the name whatever the order
    catalog = scan([tmp_path / "one", tmp_path / "two"])
    assert [(e.name, e.path, e.status) for e in catalog.entries] == [("style", second, Status.AVAILABLE)]
    assert [(p.path, p.other) for p in catalog.problems] == [(first, second)]


def test_names_that_become_equal_when_made_safe_collide(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "Lora"
    write_safetensors(folder / "a:b.safetensors", lora("sd1"))
    write_safetensors(folder / "a_b.safetensors", lora("sd1"))
    catalog = scan([tmp_path / "models"])
    assert [e.path.name for e in catalog.entries] == ["a:b.safetensors"]  # by path: ':' sorts before '_'
    assert [p.path.name for p in catalog.problems] == ["a_b.safetensors"]


def test_checkpoints_and_diffusers_folders_share_names_other_kinds_do_not(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_safetensors(models / "checkpoints" / "dream.safetensors", checkpoint("v1"))
    diffusers_pipeline(models / "diffusers" / "dream", unet={"cross_attention_dim": 768})
    write_safetensors(models / "loras" / "dream.safetensors", lora("sd1"))
    catalog = scan([models])
    assert [(e.kind, e.name) for e in catalog.entries] == [(Kind.CHECKPOINT, "dream"), (Kind.LORA, "dream")]
    assert [p.path for p in catalog.problems] == [models / "diffusers" / "dream"]


def test_one_file_reached_twice_is_listed_once(tmp_path: Path) -> None:
    real = write_safetensors(tmp_path / "models" / "loras" / "style.safetensors", lora("sd1"))
    (tmp_path / "models" / "loras" / "again.safetensors").symlink_to(real)
    (tmp_path / "models" / "loras" / "loop").symlink_to(tmp_path / "models" / "loras")
    catalog = scan([tmp_path / "models", tmp_path / "models"])
    assert [e.name for e in catalog.entries] == ["again"]  # the first path to it, in name order
    assert catalog.problems == ()


# --- catalog as data -----------------------------------------------------------------------------


def test_a_catalog_is_json_and_reads_back(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    catalog = scan([files["models"]])
    data = json.loads(json.dumps(catalog.to_dict()))
    again = Catalog.from_dict(data)
    assert again == catalog
    entry = next(e for e in data["entries"] if e["name"] == "sd15")
    assert entry["kind"] == "checkpoint"
    assert entry["family"] == "sd"
    assert entry["architecture"] == "v1"
    assert entry["format"] == "ldm"
    assert entry["size"] == files["sd15"].stat().st_size
    assert entry["status"] == "available"
    assert len(entry["fingerprint"]) == 64


def test_the_order_is_deterministic(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    first = scan([files["models"]])
    second = scan([files["models"]])
    assert [e.to_dict() for e in first.entries] == [e.to_dict() for e in second.entries]
    kinds = [e.kind for e in first.entries]
    assert kinds == sorted(kinds, key=lambda k: list(Kind).index(k) if k else len(Kind))


def test_fitting_adapters_of_a_model(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    write_safetensors(files["models"] / "Lora" / "sd2-style.safetensors", lora("sd2"))
    catalog = scan([files["models"]])
    sd15, sdxl = catalog.get(Kind.CHECKPOINT, "sd15"), catalog.get(Kind.DIFFUSERS, "sdxl_base")
    assert sd15 is not None and sdxl is not None
    assert [e.name for e in catalog.fitting(sd15, Kind.LORA)] == ["watercolor"]
    assert [e.name for e in catalog.fitting(sdxl, Kind.LORA)] == ["xl/pixel art"]
    assert [e.name for e in catalog.fitting(sdxl, Kind.VAE)] == ["vae-ft-mse"]
    assert [e.name for e in catalog.fitting(sd15, Kind.EMBEDDING)] == ["bad-hands"]
    assert catalog.fitting(sdxl, Kind.EMBEDDING) == ()


# --- rescans ----------------------------------------------------------------------------------


def refuse_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError(f"read a header: {args[0]}")

    monkeypatch.setattr(catalog_read, "header_bytes", refuse)
    monkeypatch.setattr(catalog_read, "read_header", refuse)


def test_a_rescan_of_an_unchanged_folder_reads_no_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = a1111_models(tmp_path / "webui")
    (files["models"] / "Lora" / "broken.safetensors").write_bytes(b"\x01")
    first = scan([files["models"]])
    assert first.stats.headers_read == len(first.entries)
    refuse_reading(monkeypatch)
    again = scan([files["models"]], first)
    assert again.entries == first.entries
    assert (again.stats.headers_read, again.stats.reused) == (0, len(first.entries))
    from_json = scan([files["models"]], Catalog.from_dict(json.loads(json.dumps(first.to_dict()))))
    assert from_json.entries == first.entries


def test_a_rescan_reads_what_changed_and_drops_what_left(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    first = scan([files["models"]])
    write_safetensors(files["lora"], lora("sd2"))  # replaced in place: another size
    os.utime(files["lora"], ns=(1, 1))
    files["vae"].unlink()
    new = write_safetensors(files["models"] / "Lora" / "new.safetensors", lora("sdxl", "diffusers"))
    again = scan([files["models"]], first)
    assert again.stats.headers_read == 2
    entries = listed(again)
    assert entries[("lora", "watercolor")].architecture == "v2"
    assert ("vae", "vae-ft-mse") not in entries
    assert entries[("lora", "new")].path == new


def test_a_moved_file_is_not_read_again(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    first = scan([files["models"]])
    files["sdxl"].rename(files["sdxl"].with_name("renamed.safetensors"))
    again = scan([files["models"]], first)
    assert (again.stats.headers_read, again.stats.same_header) == (0, 1)
    assert listed(again)[("checkpoint", "renamed")].architecture == "xl_base"


def test_reading_in_processes_finds_what_one_process_finds(tmp_path: Path) -> None:
    files = a1111_models(tmp_path / "webui")
    alone = scan([files["models"]], processes=1)
    together = scan([files["models"]], processes=2)
    assert together.entries == alone.entries
    assert together.stats.headers_read == len(alone.entries)  # no header is shared between processes


# --- the benchmark ------------------------------------------------------------------------------


def test_the_scan_benchmark_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.catalog_scan import main

    main(["--files", "40", "--rounds", "1", "--processes", "1"])
    figures = json.loads(capsys.readouterr().out)
    assert figures["benchmark"] == "catalog_scan"
    assert sum(kind["files"] for kind in figures["kinds"].values()) == 40
    assert figures["counters"]["cold"]["headers_read"] == 40
    assert figures["counters"]["warm"]["headers_read"] == 0
    assert figures["counters"]["changed"]["headers_read"] == figures["counters"]["changed"]["rewritten"] == 1
    assert figures["counters"]["unavailable"] == 0


def test_the_scan_benchmark_has_a_help(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.catalog_scan import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
