"""Upscaler models found in the models folders (docs/models.md#upscalers): AUTOMATIC1111's
``ESRGAN/``, ``RealESRGAN/``, ``SwinIR/``, ``DAT/``, ``HAT/`` and ComfyUI's
``upscale_models/`` hold upscalers because of where they are; they are listed, join the
registry beside the models file's, are offered by the web tier and the A1111 API after a
rescan, and upscale jobs naming them give the model's pixels."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from easel.shared.catalog import Catalog, Entry, Layout, Status, scan
from easel.shared.catalog_registry import ON_WORKERS, with_catalog
from easel.shared.catalog_store import read_catalog
from easel.shared.classify import Kind
from easel.shared.db import session_scope
from easel.shared.errors import ValidationFailed
from easel.shared.registry import ModelSource, ModelSpec, Registry
from easel.shared.upscalers import UpscalerSpec, upscaler_names
from tests.factories import (
    encode,
    fetch,
    gradient,
    make_runner,
    migrated_settings,
    queue_upscale,
    upscale_env,
)
from tests.model_files import esrgan, upscaled, vae, write_safetensors, write_tiny_esrgan

PARTIAL = b"\x10\x00\x00\x00\x00\x00\x00\x00{"  # a safetensors header cut short


def upscalers(catalog: Catalog) -> dict[str, Entry]:
    return {e.name: e for e in catalog.entries if e.kind is Kind.UPSCALER}


def worker_registry(base: Registry, catalog: Catalog) -> tuple[Registry, list[str]]:
    """The registry a worker serves for ``catalog`` (the found files with their paths)."""
    from easel.worker.catalog_sync import records_of

    return with_catalog(base, records_of(catalog))


# --- the scan ---------------------------------------------------------------------------------


def test_a1111_upscaler_folders_are_listed_by_folder_and_named_like_other_files(tmp_path: Path) -> None:
    models = tmp_path / "webui" / "models"
    write_safetensors(models / "Stable-diffusion" / "keep.safetensors", vae(""))  # a VAE in the wrong place
    for folder in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT"):
        (models / folder).mkdir(parents=True)
    (models / "ESRGAN" / "4x-UltraSharp.pth").write_bytes(b"PK any bytes: the folder tells")
    (models / "ESRGAN" / "photo").mkdir()
    (models / "ESRGAN" / "photo" / "4x: bigify.pt").write_bytes(b"weights")
    write_safetensors(models / "ESRGAN" / "both.safetensors", esrgan())
    (models / "ESRGAN" / "both.pth").write_bytes(b"the .safetensors wins")
    (models / "ESRGAN" / "notes.txt").write_text("not a model file")
    (models / "ESRGAN" / "old.ckpt").write_bytes(b"not an upscaler suffix")
    (models / "RealESRGAN" / "RealESRGAN_x4plus.pth").write_bytes(b"weights")
    (models / "RealESRGAN" / "4x-UltraSharp.pth").write_bytes(b"ESRGAN/ comes first")
    (models / "SwinIR" / "swinir.pth").write_bytes(b"weights")
    (models / "DAT" / "dat x4.safetensors").write_bytes(PARTIAL)
    (models / "HAT" / "empty.pth").write_bytes(b"")
    catalog = scan([models])
    assert catalog.roots[0].layout is Layout.A1111
    found = {name: (e.status.value, e.format, e.reason) for name, e in upscalers(catalog).items()}
    assert found == {
        "4x-UltraSharp": ("available", "pickle", None),
        "photo/4x_ bigify": ("available", "pickle", None),
        "both": ("available", "safetensors", None),
        "RealESRGAN_x4plus": ("available", "pickle", None),
        "swinir": ("available", "pickle", None),
        "dat x4": ("unavailable", "safetensors", found["dat x4"][2]),
        "empty": ("unavailable", "pickle", "empty.pth: an empty file (a partial copy?)"),
    }
    assert "dat x4.safetensors" in str(found["dat x4"][2]) and str(models) not in str(found["dat x4"][2])
    assert upscalers(catalog)["both"].path.suffix == ".safetensors"
    assert upscalers(catalog)["both"].architecture is None  # no key was read
    assert upscalers(catalog)["4x-UltraSharp"].root == models / "ESRGAN"
    taken = {(p.path.name, p.other.name if p.other else None) for p in catalog.problems}
    assert taken == {("both.pth", "both.safetensors"), ("4x-UltraSharp.pth", "4x-UltraSharp.pth")}
    assert (
        next(e for e in catalog.entries if e.name == "keep").kind is Kind.CHECKPOINT
    )  # other kinds as before


def test_a_comfyui_upscale_models_folder_and_a_corrupt_file(tmp_path: Path) -> None:
    models = tmp_path / "ComfyUI" / "models"
    write_safetensors(models / "upscale_models" / "4x-sharp.safetensors", esrgan())
    (models / "upscale_models" / "half-copied.safetensors").write_bytes(PARTIAL)
    (models / "upscale_models" / "garbage.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    catalog = scan([tmp_path / "ComfyUI"])  # the folder alone says ComfyUI
    assert catalog.roots[0].layout is Layout.COMFYUI
    entries = upscalers(catalog)
    assert entries["4x-sharp"].available and entries["4x-sharp"].format == "safetensors"
    for name in ("half-copied", "garbage"):
        reason = entries[name].reason or ""
        assert entries[name].status is Status.UNAVAILABLE
        assert f"{name}.safetensors" in reason and str(models) not in reason
    registry, skipped = worker_registry(Registry([], None, strict=False), catalog)
    assert upscaler_names(registry) == ["lanczos", "4x-sharp"]
    assert any(s.startswith("upscaler 'half-copied': ") for s in skipped)


def test_an_upscaler_and_the_same_keys_elsewhere_are_each_what_their_place_says(tmp_path: Path) -> None:
    """One header in ``upscale_models/`` and, copied in later, in a plain folder: an
    upscaler there, a file of no known layout here (the header already seen lends it no
    facts); a rescan keeps both and reads nothing."""
    comfy, plain = tmp_path / "comfy" / "models", tmp_path / "plain"
    write_safetensors(comfy / "upscale_models" / "x4.safetensors", esrgan())
    plain.mkdir()
    first = scan([plain, comfy])
    write_safetensors(plain / "x4.safetensors", esrgan())
    second = scan([plain, comfy], first)
    kinds = {(e.root.name, e.kind, e.status) for e in second.entries}
    assert kinds == {("upscale_models", Kind.UPSCALER, Status.AVAILABLE), ("plain", None, Status.UNAVAILABLE)}
    again = scan([plain, comfy], second)
    assert again.entries == second.entries and again.stats.headers_read == 0


# --- the registry -----------------------------------------------------------------------------


def test_found_upscalers_join_the_registry_and_the_models_file_wins(tmp_path: Path) -> None:
    models = tmp_path / "webui" / "models"
    for name in ("4x-sharp", "mine", "lanczos"):
        (models / "ESRGAN").mkdir(parents=True, exist_ok=True)
        (models / "ESRGAN" / f"{name}.pth").write_bytes(b"weights")
    base = Registry(
        [ModelSpec(name="m", source=ModelSource.TINY)],
        "m",
        upscalers={"mine": UpscalerSpec(name="mine", location="/srv/models-file.pth")},
    )
    catalog = scan([models])
    registry, skipped = worker_registry(base, catalog)
    assert upscaler_names(registry) == ["lanczos", "4x-sharp", "mine"]
    assert registry.upscalers["mine"].location == "/srv/models-file.pth"  # the models file's entry wins
    assert registry.upscalers["4x-sharp"].location == str(
        models / "ESRGAN" / "4x-sharp.pth"
    )  # the worker's path
    assert skipped == ["upscaler 'lanczos': the name of a built-in upscaler; rename the file"]
    assert upscalers(catalog)["lanczos"].available  # still listed: the registry is what leaves it out


def test_the_web_tier_lists_found_upscalers_after_a_rescan_and_accepts_them(tmp_path: Path) -> None:
    """A worker's scan, published to the database: the web tier's registry, the A1111 list,
    the upscale form and job validation see its upscalers, without a server path; a file
    copied in is there after the next rescan."""
    from easel.web import create_app
    from easel.worker.catalog_sync import CatalogSync, scan_folders

    settings = migrated_settings(home=tmp_path / "home", auth_enabled=False, catalog_refresh_seconds=0)
    folder = tmp_path / "ComfyUI" / "models" / "upscale_models"
    write_safetensors(folder / "4x-sharp.safetensors", esrgan())
    (folder / "cut.safetensors").write_bytes(PARTIAL)
    applied: list[Registry] = []
    sync = CatalogSync(
        [folder.parent],
        Registry([], None, strict=False),
        lambda: session_scope(settings.database_url),
        "worker-1",
        applied.append,
        scanner=scan_folders,
        interval=0,
        lost_after=30,
    )
    sync.scan()
    app = create_app(settings)
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").get_json()]
    assert names == ["None", "lanczos", "4x-sharp"]
    assert client.get("/api/v1/upscalers").get_json() == {
        "upscalers": [{"name": "lanczos", "builtin": True}, {"name": "4x-sharp", "builtin": False}]
    }
    assert '<option value="4x-sharp"' in client.get("/upscale").get_data(as_text=True)
    files = {(f["kind"], f["name"]): f for f in client.get("/api/v1/catalog").get_json()["files"]}
    assert (
        files[("upscaler", "4x-sharp")]["available"]
        and files[("upscaler", "4x-sharp")]["format"] == "safetensors"
    )
    assert not files[("upscaler", "cut")]["available"]
    assert str(tmp_path) not in client.get("/api/v1/catalog").get_data(as_text=True)
    with session_scope(settings.database_url) as session:
        assert {r.name for r in read_catalog(session) if r.kind == "upscaler"} == {"4x-sharp", "cut"}
    web = app.extensions["easel"].registry
    assert web.upscalers["4x-sharp"].location == ON_WORKERS  # only the worker knows the file
    image = {"image": (io.BytesIO(encode(gradient(16, 16))), "in.png")}
    accepted = client.post("/api/v1/jobs", data={"type": "upscale", "upscaler": "4x-sharp", **image})
    assert accepted.status_code == 202, accepted.get_json()
    hires = {"prompt": "a cat", "width": 64, "height": 64, "hires": {"upscaler": "4x-sharp"}}
    assert client.post("/api/v1/jobs", json=hires).status_code == 202  # the hires fix's upscaler too
    assert client.post("/api/v1/jobs", json={**hires, "hires": {"upscaler": "later"}}).status_code == 422
    refused = client.post("/api/v1/jobs", json={"type": "upscale", "upscaler": "later", "image": _b64()})
    assert refused.status_code == 422

    write_safetensors(folder / "later.safetensors", esrgan())  # copied in; picked up by the next rescan
    sync.scan()
    assert "later" in [u["name"] for u in client.get("/sdapi/v1/upscalers").get_json()]
    assert (
        client.post(
            "/api/v1/jobs", json={"type": "upscale", "upscaler": "later", "image": _b64()}
        ).status_code
        == 202
    )
    assert applied[-1].upscalers["later"].location == str(
        folder / "later.safetensors"
    )  # the worker's registry


def _b64() -> str:
    from tests.factories import b64

    return b64(gradient(16, 16))


# --- jobs -------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    yield from upscale_env(tmp_path)


def stored(env: dict[str, Any], job_id: str) -> np.ndarray:
    job = fetch(env, job_id)
    assert job.status == "succeeded", job.error_message
    with Image.open(io.BytesIO(env["storage"].get(job.outputs[0].storage_key))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def test_jobs_naming_found_upscalers_give_the_models_pixels(env: dict[str, Any], tmp_path: Path) -> None:
    """A tiny ESRGAN as ``.pth`` in A1111's ``ESRGAN/`` and another as ``.safetensors`` in
    ComfyUI's ``upscale_models/``: each job's pixels are its model's (within rounding); the
    second, copied in later, is served from the rescan on, by the worker's own registry."""
    from easel.worker.catalog_sync import CatalogSync, scan_folders

    a1111, comfy = tmp_path / "webui" / "models", tmp_path / "ComfyUI" / "models"
    pth = write_tiny_esrgan(a1111 / "ESRGAN" / "tiny.pth", seed=0)
    (comfy / "upscale_models").mkdir(parents=True)
    runner = make_runner(env)

    def serve(registry: Registry) -> None:  # what the worker process does with each scan's registry
        env["registry"] = runner.registry = registry

    sync = CatalogSync(
        [a1111, comfy],
        env["registry"],
        lambda: session_scope(env["settings"].database_url),
        "test:1",
        serve,
        scanner=scan_folders,
        interval=0,
        lost_after=30,
    )
    sync.scan()
    source = gradient(28, 20)
    with pytest.raises(ValidationFailed, match="upscaler"):
        queue_upscale(env, source, upscaler="tiny-comfy", scale=4)  # not there yet
    first = queue_upscale(env, source, upscaler="tiny", scale=4)
    runner.run_next()
    assert stored(env, first).shape == (80, 112, 3)
    assert np.abs(stored(env, first) - upscaled(pth, source)).max() <= 1.0

    safetensors = write_tiny_esrgan(comfy / "upscale_models" / "tiny-comfy.safetensors", seed=1)
    sync.scan()  # the rescan a worker runs every EASEL_MODELS_RESCAN_SECONDS or when asked
    second = queue_upscale(env, source, upscaler="tiny-comfy", scale=2)
    runner.run_next()
    expected = Image.fromarray(upscaled(safetensors, source).round().astype(np.uint8))
    expected = expected.resize((56, 40), Image.Resampling.LANCZOS)  # the model's 4x, resized to the job's 2x
    assert np.abs(stored(env, second) - np.asarray(expected, dtype=np.float32)).max() <= 1.0
    assert np.abs(upscaled(safetensors, source) - upscaled(pth, source)).max() > 10  # two different models


def test_a_broken_pth_in_a_folder_fails_its_job_and_the_next_job_succeeds(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """The folder says a ``.pth`` is an upscaler, so a damaged one is listed; its load fails
    its job (``model_load_error``, no server path) and the worker serves the next one."""
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    (folder / "broken.pth").write_bytes(b"these bytes are not a model")
    model = write_tiny_esrgan(folder / "good.pth")
    catalog = scan([folder.parent])
    assert upscalers(catalog)["broken"].available
    env["registry"], _ = worker_registry(env["registry"], catalog)
    source = gradient(16, 12)
    bad = queue_upscale(env, source, upscaler="broken", scale=4)
    good = queue_upscale(env, source, upscaler="good", scale=4)
    runner = make_runner(env)
    runner.run_next()
    runner.run_next()
    failed = fetch(env, bad)
    assert failed.status == "failed" and failed.error_code == "model_load_error"
    message = failed.error_message or ""
    assert "upscaler 'broken' cannot be loaded" in message and str(tmp_path) not in message
    assert np.abs(stored(env, good) - upscaled(model, source)).max() <= 1.0
