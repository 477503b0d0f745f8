"""SD upscale on img2img: the tile grid and its blend, the request's validation and batch
key, the engine (output size, one progress count, seed-exact batched), the runner, the
AUTOMATIC1111 mapping, the form and the CLI."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from easel.shared.errors import ValidationFailed
from easel.shared.registry import ModelSource, ModelSpec, Registry
from easel.shared.schemas import JobInputs, ResolvedJob, parse_job_request, resolve_job
from easel.shared.sd_upscale import axis_positions, grid, tile_count
from easel.shared.settings import Settings
from easel.worker.engine.tiles import blend, ramp, split
from tests.factories import cli_submit_fields, fetch, generation_request, gradient, make_runner, rgb_pixels

# -- the grid and the blend -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "tile", "overlap"), [(64, 64, 0), (128, 64, 16), (200, 64, 32), (1024, 512, 64), (97, 40, 8)]
)
def test_tiles_cover_the_side_and_overlap_at_least_as_asked(size: int, tile: int, overlap: int) -> None:
    xs = axis_positions(size, tile, overlap)
    assert xs[0] == 0 and xs[-1] == size - tile
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(xs))  # no gap, overlap kept
    assert all(b > a for a, b in itertools.pairwise(xs))


def test_a1111s_grid_of_a_512_tile_over_1024() -> None:
    assert axis_positions(1024, 512, 64) == [0, 256, 512]  # ceil(960 / 448) = 3 tiles
    assert tile_count((1024, 768), (512, 512), 64) == 3 * 2


def test_a_tile_larger_than_the_image_or_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        axis_positions(60, 64, 0)
    with pytest.raises(ValueError, match="do not fit"):
        axis_positions(128, 64, 64)


@pytest.mark.parametrize(("size", "tile", "overlap"), [((200, 136), (64, 64), 24), ((128, 128), (64, 48), 0)])
def test_a_constant_image_reassembles_exactly(
    size: tuple[int, int], tile: tuple[int, int], overlap: int
) -> None:
    image = Image.new("RGB", size, (200, 17, 90))
    pieces = split(image, tile, overlap)
    assert len(pieces) == tile_count(size, tile, overlap)
    assert np.array_equal(np.asarray(blend(pieces, size, overlap)), np.asarray(image))


def test_untouched_tiles_reassemble_the_image() -> None:
    image = gradient(200, 136)
    out = blend(split(image, (64, 64), 24), image.size, 24)
    assert np.abs(np.asarray(out, dtype=np.int16) - np.asarray(image, dtype=np.int16)).max() <= 1


def test_the_blend_has_no_seams() -> None:
    """Tiles of two flat colours: across every overlap the blend moves from one to the
    other in steps no larger than the ramp's, and nowhere else does it change."""
    size, tile, overlap = (224, 64), (64, 64), 16  # tiles at 0, 40, 80, 120, 160: 24 shared
    xs, _ = grid(size, tile, overlap)
    pieces = [Image.new("RGB", tile, (0, 0, 0) if i % 2 == 0 else (255, 255, 255)) for i in range(len(xs))]
    row = np.asarray(blend(pieces, size, overlap), dtype=np.int16)[10, :, 0]
    jumps = np.abs(np.diff(row))
    least_shared = min(a + tile[0] - b for a, b in itertools.pairwise(xs))
    assert jumps.max() <= 255 / least_shared + 1  # a ramp, not a step
    weights = ramp(xs, tile[0], 1)
    assert weights.min() > 0 and weights.max() == 1.0
    left, right = ramp(xs, tile[0], 0), ramp(xs, tile[0], 1)
    shared = xs[0] + tile[0] - xs[1]
    assert np.allclose(left[tile[0] - shared :] + right[:shared], 1.0)  # neighbours add up to 1


def test_blend_refuses_a_wrong_count() -> None:
    with pytest.raises(ValueError, match="tiles for a grid"):
        blend([Image.new("RGB", (64, 64))], (128, 64), 0)


# -- the request -----------------------------------------------------------------------------


def spec_for(location: str = "unused", max_size: int = 512) -> ModelSpec:
    return ModelSpec(
        name="tiny-sd",
        source=ModelSource.DIRECTORY,
        location=location,
        default_size=64,
        max_size=max_size,
        family="sd",
    )


def resolved(image: Image.Image | None = None, **fields: Any) -> ResolvedJob:
    registry = Registry([spec_for()], "tiny-sd")
    request = parse_job_request({"prompt": "a cat", "type": "img2img", **fields})
    return resolve_job(request, registry, Settings(), JobInputs(image=image or gradient(64, 64)))


def refused(image: Image.Image | None = None, **fields: Any) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        resolved(image, **fields)
    return {d["field"]: d["message"] for d in caught.value.details}


def test_sd_upscale_resolves_the_output_and_tile() -> None:
    job = resolved(gradient(100, 60), width=128, height=96, sd_upscale={"scale": 2})
    assert job.sd_upscale is not None
    assert job.sd_upscale.model_dump() == {
        "upscaler": "lanczos",
        "scale": 2.0,
        "overlap": 64,
        "width": 200,
        "height": 120,
    }
    assert (job.width, job.height) == (128, 96)  # the tile
    assert job.output_size == (200, 120)
    with pytest.raises(ValidationFailed):  # overlap 64 is not smaller than the 64 tile
        resolved(gradient(100, 60), sd_upscale={"scale": 2, "overlap": 64, "upscaler": "lanczos"}, width=64)
    small = resolved(gradient(100, 60), steps=10, strength=0.5, sd_upscale={"overlap": 16})
    assert (small.width, small.height) == (64, 64)  # the tile: the model's size
    assert small.tiles == tile_count((200, 120), (64, 64), 16) == 4 * 3
    assert small.denoising_steps == 5 * 12
    sized = resolved(gradient(64, 64), width=96, height=64, sd_upscale={"overlap": 8})
    assert (sized.width, sized.height) == (96, 64) and sized.output_size == (128, 128)
    assert resolved().sd_upscale is None and resolved().output_size == (64, 64)


def test_a_tile_larger_than_the_output_is_cut_to_it() -> None:
    job = resolved(gradient(40, 40), sd_upscale={"scale": 1.75, "overlap": 8})  # 70 x 70
    assert (job.width, job.height) == (64, 64) and job.output_size == (70, 70)
    wide = resolved(gradient(64, 64), width=256, height=96, sd_upscale={"overlap": 8})  # 128 x 128
    assert (wide.width, wide.height) == (128, 96) and wide.tiles == 1 * 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sd_upscale": {"scale": 1}}, "sd_upscale.scale"),
        ({"sd_upscale": {"scale": 4.5}}, "sd_upscale.scale"),
        ({"sd_upscale": {"overlap": 300}}, "sd_upscale.overlap"),
        ({"sd_upscale": {"overlap": -1}}, "sd_upscale.overlap"),
        ({"sd_upscale": {"overlap": 64}}, "sd_upscale.overlap"),  # not smaller than the 64 tile
        ({"sd_upscale": {"upscaler": "nope"}}, "sd_upscale.upscaler"),
        ({"sd_upscale": {"colour": 1}}, "sd_upscale.colour"),
        ({"sd_upscale": {"overlap": 8}, "tiling": True}, "sd_upscale"),
    ],
)
def test_bad_sd_upscale_is_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    assert field in refused(**fields)


def test_an_output_past_the_largest_side_or_below_the_least_tile_is_refused() -> None:
    assert "sd_upscale.scale" in refused(gradient(4000, 64), sd_upscale={"scale": 4})
    small = refused(gradient(40, 40), sd_upscale={"scale": 1.2, "overlap": 8})  # 48 x 48
    assert small == {"sd_upscale.scale": "makes 48x48, smaller than model 'tiny-sd''s least tile of 64"}


def test_sd_upscale_on_another_kind_names_the_kinds_that_take_it() -> None:
    registry = Registry([spec_for()], "tiny-sd")
    with pytest.raises(ValidationFailed) as caught:
        resolve_job(parse_job_request({"prompt": "a cat", "sd_upscale": {}}), registry, Settings())
    assert {d["field"]: d["message"] for d in caught.value.details} == {
        "sd_upscale": "applies only to img2img jobs"
    }


def test_sd_upscale_is_part_of_the_batch_key() -> None:
    plain = resolved()
    two = resolved(sd_upscale={"overlap": 8})
    three = resolved(sd_upscale={"overlap": 8, "scale": 3})
    other_overlap = resolved(sd_upscale={"overlap": 16})
    keys = {job.params.batch_key() for job in (plain, two, three, other_overlap)}
    assert len(keys) == 4
    assert (
        resolved(sd_upscale={"overlap": 8}, seed=1).params.batch_key()
        == resolved(sd_upscale={"overlap": 8}, seed=2, prompt="a dog").params.batch_key()
    )


def test_form_fields_make_the_sd_upscale_object() -> None:
    fields = {
        "sd_upscale": "on",
        "sd_upscale_scale": "3",
        "sd_upscale_upscaler": "",
        "sd_upscale_overlap": "8",
    }
    request = parse_job_request({"prompt": "p", "type": "img2img", **fields})
    assert request.sd_upscale is not None and (request.sd_upscale.scale, request.sd_upscale.overlap) == (3, 8)
    off = parse_job_request({"prompt": "p", "type": "img2img", "sd_upscale_upscaler": "lanczos"})
    assert off.sd_upscale is None  # not on: no box, no scale


# -- the engine ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def img2img(tiny_model: Path) -> Any:
    from easel.worker.engine.device import DevicePlan
    from easel.worker.engine.pipelines import ModelPipelines, load_pipeline

    spec = spec_for(str(tiny_model))
    return ModelPipelines(spec, load_pipeline(spec, DevicePlan("cpu", "float32"))).for_type("img2img")


SD_UPSCALE = {"upscaler": "lanczos", "scale": 2.0, "overlap": 16, "width": 128, "height": 96}


def sd_request(seeds: tuple[int, ...], prompt: str = "a blue bird", **fields: Any) -> Any:
    return generation_request(
        image=gradient(64, 48),
        seeds=seeds,
        prompt=prompt,
        type="img2img",
        strength=0.5,
        steps=4,
        sd_upscale={**SD_UPSCALE, **fields},
    )


def test_the_engine_redraws_every_tile_with_one_progress_count(img2img: Any) -> None:
    from easel.worker.engine.generate import generate_batch
    from easel.worker.engine.upscale import lanczos

    steps: list[tuple[int, int]] = []
    request = sd_request((5,))
    assert request.params.tiles == 3 * 2
    (images,) = generate_batch(
        img2img, [request], lambda done, total: steps.append((done, total)), sd_upscale=lanczos
    )
    assert [image.size for image in images] == [(128, 96)]
    total = request.params.denoising_steps
    assert total == 6 * 2 and steps[-1] == (total, total)
    assert steps == [(6, total), (12, total)]  # 6 tiles a step, in one call
    more: list[tuple[int, int]] = []
    (two,) = generate_batch(
        img2img, [sd_request((5, 6))], lambda d, t: more.append((d, t)), sd_upscale=lanczos
    )
    assert [done for done, _ in more] == sorted(done for done, _ in more) and more[-1] == (total, total)
    assert {t for _, t in more} == {total}  # 12 tiles in calls of 8 and 4: still one image's count
    assert np.abs(np.asarray(two[0], dtype=np.int16) - np.asarray(images[0], dtype=np.int16)).max() <= 1
    source = np.asarray(lanczos(gradient(64, 48), (128, 96)), dtype=np.int16)
    assert np.abs(np.asarray(images[0], dtype=np.int16) - source).mean() > 1.0  # it was redrawn
    with pytest.raises(ValueError, match="upscaler"):
        generate_batch(img2img, [request])


def test_sd_upscale_pixels_are_the_same_alone_and_batched(img2img: Any) -> None:
    from easel.worker.engine import generate
    from easel.worker.engine.generate import generate_batch
    from easel.worker.engine.upscale import lanczos

    first, second = sd_request((21,)), sd_request((40, 41), prompt="a red fox")
    alone = [generate_batch(img2img, [r], sd_upscale=lanczos)[0] for r in (first, second)]
    batched = generate_batch(img2img, [first, second], sd_upscale=lanczos)
    assert len(first.params.seeds) * 6 + len(second.params.seeds) * 6 > generate.TILES_PER_CALL  # calls split
    for own, together in zip(alone, batched, strict=True):
        assert len(own) == len(together)
        for a, b in zip(own, together, strict=True):
            # As test_engine's batches: float batching may move a value by one level, no more.
            assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1
    diff = np.asarray(batched[1][0], dtype=np.int16) - np.asarray(batched[1][1], dtype=np.int16)
    assert np.abs(diff).mean() > 1.0  # their own seeds


# -- the runner ------------------------------------------------------------------------------


def test_the_runner_runs_an_sd_upscale_job_to_the_scaled_size(env: dict[str, Any]) -> None:
    fields = {"type": "img2img", "strength": 0.5, "sd_upscale": {"scale": 2, "overlap": 16}}
    job_ids = []
    for _ in range(2):
        job_id = enqueue_with_image(env, gradient(48, 40), **fields)
        job_ids.append(job_id)
    runner = make_runner(env)
    runner.max_batch_images = 4
    assert runner.run_next() == job_ids[0]
    runner.drain()
    job = fetch(env, job_ids[0])
    assert job.status == "succeeded", job.error_message
    assert job.batch_size == 2 and fetch(env, job_ids[1]).batch_id == job.batch_id
    assert (job.progress_step, job.progress_total) == (4 * 1, 4 * 1)  # 4 tiles of 1 step (3 x 0.5)
    assert [(o.width, o.height) for o in job.outputs] == [(96, 80)]
    assert rgb_pixels(env["storage"].get(job.outputs[0].storage_key)).shape == (80, 96, 3)


def enqueue_with_image(env: dict[str, Any], image: Image.Image, **fields: Any) -> str:
    """A queued job of ``fields`` with ``image`` stored as its input."""
    from easel.shared.jobs import create_job, input_key
    from tests.factories import encode

    resolved_job = resolve_job(
        parse_job_request({"prompt": "a cat", "steps": 3, **fields}),
        env["registry"],
        env["settings"],
        JobInputs(image=image),
    )
    with env["sessions"]() as session:
        job = create_job(session, resolved_job)
        key = input_key(job.id, "image")
        env["storage"].put(key, encode(image), "image/png")
        job.input_key = key
        session.commit()
        return job.id


# -- AUTOMATIC1111 ---------------------------------------------------------------------------


def a1111_img2img(body: dict[str, Any], registry: Any = None) -> dict[str, Any]:
    """The job fields ``web.a1111``'s img2img makes of ``body`` (images aside)."""
    from easel.web.a1111_extras import sd_upscale_fields
    from easel.web.a1111_map import is_sd_upscale, job_fields

    fields = job_fields(body, None, img2img=True)
    if is_sd_upscale(body):
        fields["sd_upscale"] = sd_upscale_fields(body, registry)
    return fields


def test_a1111s_sd_upscale_script_maps_onto_sd_upscale() -> None:
    from easel.shared.upscalers import UpscalerSpec

    body = {"prompt": "p", "script_name": "SD upscale", "script_args": ["", 32, 0, 3]}
    assert a1111_img2img(body)["sd_upscale"] == {"upscaler": "lanczos", "scale": 3, "overlap": 32}
    assert a1111_img2img({**body, "script_args": []})["sd_upscale"] == {
        "upscaler": "lanczos",
        "scale": 2.0,
        "overlap": 64,
    }
    registry = Registry(
        [spec_for()], "tiny-sd", upscalers={"esrgan": UpscalerSpec(name="esrgan", location="x")}
    )
    by_index = a1111_img2img({**body, "script_name": "sd upscale", "script_args": [None, 8, 2, 2]}, registry)
    assert by_index["sd_upscale"]["upscaler"] == "esrgan"  # None, lanczos, esrgan
    by_name = a1111_img2img({**body, "script_args": ["", 8, "ESRGAN", 2.5]}, registry)
    assert by_name["sd_upscale"] == {"upscaler": "esrgan", "scale": 2.5, "overlap": 8}
    assert a1111_img2img({**body, "script_args": ["", 8, "Lanczos"]})["sd_upscale"]["upscaler"] == "lanczos"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"script_name": "SD upscale", "script_args": ["", 8, 7, 2]}, "script_args"),
        ({"script_name": "SD upscale", "script_args": ["", 8, "nope", 2]}, "script_args"),
        ({"script_name": "SD upscale", "script_args": ["", "wide", 0, 2]}, "script_args"),
        ({"script_name": "SD upscale", "script_args": ["", 8, 0, True]}, "script_args"),
        ({"script_name": "SD upscale", "script_args": "1,2"}, "script_args"),
        ({"script_name": "SD upscale", "script_args": [1, 2, 3, 4, 5]}, "script_args"),
        ({"script_name": "Loopback", "script_args": []}, "script_name"),
        ({"script_name": "X/Y/Z plot"}, "script_name"),
    ],
)
def test_a1111s_bad_scripts_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        a1111_img2img({"prompt": "p", **body})
    assert [d["field"] for d in caught.value.details] == [field]


def test_a1111s_sd_upscale_is_refused_on_txt2img_and_its_range_errors_name_script_args() -> None:
    from easel.web.a1111_map import a1111_error, job_fields

    with pytest.raises(ValidationFailed) as caught:
        job_fields({"prompt": "p", "script_name": "SD upscale"}, None)
    assert [d["field"] for d in caught.value.details] == ["script_name"]
    fields = a1111_img2img({"prompt": "p", "script_name": "SD upscale", "script_args": ["", 8, 0, 9]})
    with pytest.raises(ValidationFailed) as refusal:
        resolved(**{k: v for k, v in fields.items() if k != "num_images"})
    status, body = a1111_error(422, {"details": refusal.value.details})
    assert status == 422 and [d["loc"] for d in body["detail"]] == [["body", "script_args"]]


def test_a1111s_override_settings_tiling_maps_onto_tiling() -> None:
    from easel.web.a1111_map import job_fields

    assert job_fields({"prompt": "p", "override_settings": {"tiling": True}}, None)["tiling"] is True
    assert "tiling" not in job_fields({"prompt": "p", "override_settings": {"tiling": False}}, None)
    assert job_fields({"prompt": "p", "tiling": True, "override_settings": {}}, None)["tiling"] is True


def test_a1111s_info_tells_the_sd_upscale() -> None:
    import json
    from datetime import UTC, datetime

    from easel.web.a1111_map import info
    from tests.factories import job_row

    job = job_row(type="img2img", strength=0.4, sd_upscale=SD_UPSCALE, created_at=datetime.now(UTC), id="j1")
    job.outputs = []
    extra = json.loads(info(job))["extra_generation_params"]
    assert extra == {"SD upscale overlap": 16, "SD upscale upscaler": "None"}


# -- REST, the form and the CLI --------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path) -> Settings:
    from bench.processes import install_tiny_model
    from tests.factories import migrated_settings

    install_tiny_model(tiny_model, tmp_path)
    return migrated_settings(home=tmp_path, auth_enabled=False)


def test_rest_records_sd_upscale_and_counts_every_tile(client: Any) -> None:
    from tests.factories import b64

    body = {
        "type": "img2img",
        "model": "tiny-sd",
        "prompt": "p",
        "image": b64(gradient(100, 60)),
        "width": 64,
        "height": 64,
        "steps": 10,
        "strength": 0.5,
        "sd_upscale": {"scale": 2, "overlap": 16},
    }
    response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["params"]["sd_upscale"] == {
        "upscaler": "lanczos",
        "scale": 2.0,
        "overlap": 16,
        "width": 200,
        "height": 120,
    }
    assert (job["params"]["width"], job["params"]["height"]) == (64, 64)
    assert job["progress"]["total"] == 5 * 4 * 3  # 5 steps x 4 x 3 tiles
    refused = client.post("/api/v1/jobs", json={**body, "type": "txt2img", "image": None, "strength": None})
    assert refused.status_code == 422
    assert [d["field"] for d in refused.get_json()["error"]["details"]] == ["sd_upscale"]


def test_the_edit_form_sends_sd_upscale_and_is_filled_from_such_a_job(app: Any) -> None:
    from tests.factories import encode

    app.config["WTF_CSRF_ENABLED"] = False  # CSRF has its own tests (test_security.py)
    client = app.test_client()
    page = client.get("/edit").get_data(as_text=True)
    assert 'name="sd_upscale_scale"' in page and 'name="sd_upscale_overlap"' in page
    fields = {
        "type": "img2img",
        "model": "tiny-sd",
        "prompt": "a cat",
        "steps": "4",
        "sd_upscale": "on",
        "sd_upscale_scale": "1.5",
        "sd_upscale_overlap": "8",
        "sd_upscale_upscaler": "lanczos",
    }

    def post(data: dict[str, str]) -> Any:
        import io

        upload = {"image": (io.BytesIO(encode(gradient(64, 64))), "in.png")}
        return client.post("/edit", data={**data, **upload}, content_type="multipart/form-data")

    response = post(fields)
    assert response.status_code == 303, response.get_data(as_text=True)
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["params"]["sd_upscale"]["overlap"] == 8 and job["params"]["sd_upscale"]["width"] == 96
    again = client.get(f"/edit?from={job_id}").get_data(as_text=True)
    assert 'name="sd_upscale_overlap" inputmode="numeric" placeholder="64" value="8"' in again
    assert 'name="sd_upscale" value="on" checked' in again
    refused = post({**fields, "sd_upscale_scale": "9"})
    assert refused.status_code == 422 and 'id="sd_upscale.scale-error"' in refused.get_data(as_text=True)


def test_easel_submit_sends_the_sd_upscale_options(monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["submit", "a cat", "--type", "img2img", "--sd-upscale", "--sd-upscale-overlap", "32"]
    sent = cli_submit_fields(monkeypatch, args)
    request = parse_job_request(sent)
    assert request.sd_upscale is not None
    assert (request.sd_upscale.upscaler, request.sd_upscale.scale, request.sd_upscale.overlap) == (
        "lanczos",
        2.0,
        32,
    )
    args = ["submit", "a cat", "--type", "img2img", "--sd-upscale-scale", "3"]
    sent = cli_submit_fields(monkeypatch, args)
    scaled = parse_job_request(sent).sd_upscale  # on with a scale alone
    assert scaled is not None and scaled.scale == 3


# -- the demo model --------------------------------------------------------------------------


def test_demo_shapes_sd_upscale_keeps_the_pictures_colours_and_shape() -> None:
    """A demo-shapes picture drawn at 64, SD-upscaled to 128 in 64-pixel tiles: the judge
    reads the prompt's colours and shape back from the 128-pixel picture."""
    from easel.shared.registry import demo_spec
    from easel.worker.engine.device import DevicePlan
    from easel.worker.engine.generate import generate_batch
    from easel.worker.engine.pipelines import ModelPipelines, load_pipeline
    from easel.worker.engine.upscale import lanczos
    from tools.demo_model.world import judge, parse_caption

    spec = demo_spec()
    base = load_pipeline(spec, DevicePlan("cpu", "float32"))
    img2img = ModelPipelines(spec, base).for_type("img2img")
    prompts = ("a red circle on a blue background",)  # one: the demo model is slow on the CPU
    common = {"model": "demo-shapes", "steps": 10, "scheduler": "ddim", "guidance_scale": 7.0}
    for index, prompt in enumerate(prompts):
        (drawn,) = generate_batch(base, [generation_request(prompt=prompt, seeds=(100 + index,), **common)])[
            0
        ]
        request = generation_request(
            image=drawn,
            prompt=prompt,
            seeds=(200 + index,),
            type="img2img",
            strength=0.4,
            sd_upscale={"upscaler": "lanczos", "scale": 2.0, "overlap": 16, "width": 128, "height": 128},
            **common,
        )
        (out,) = generate_batch(img2img, [request], sd_upscale=lanczos)[0]
        assert out.size == (128, 128)
        seen, asked = judge(out), parse_caption(prompt)
        assert (seen.bg, seen.fg, seen.shape) == (asked.bg, asked.fg, asked.shape)
