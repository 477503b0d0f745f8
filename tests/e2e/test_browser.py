"""A real headless chromium fills the form, submits, and sees the image on the job page."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from bench.processes import ROOT, Stack

pytestmark = [pytest.mark.slow, pytest.mark.browser]  # chromium and the page: tests/e2e/conftest.py

# Screenshots go to the ignored tests/artifacts only, so a test run changes no tracked
# file; `make screenshots` runs this module and copies the README's walkthrough pictures
# (form, job, gallery, inpaint-form, docs) from there into docs/images.
ARTIFACTS = ROOT / "tests" / "artifacts"


def wait_until_finished(page: Any, timeout: float = 120_000) -> None:
    page.wait_for_function(
        "() => ['succeeded', 'failed', 'canceled']"
        ".includes(document.querySelector('#status').dataset.status)",
        timeout=timeout,
    )


def submit_form(page: Any, picture: str) -> None:
    """Screenshots the filled form as ``picture`` in ARTIFACTS, submits it and waits on the
    job page until the job has finished."""
    page.screenshot(path=str(ARTIFACTS / picture), full_page=True)
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/*", timeout=120_000)  # a loaded machine is slow to answer the post
    page.locator("#status").wait_for()
    wait_until_finished(page)


def test_form_submit_shows_the_finished_image(page: Any, embedded_stack: Stack) -> None:
    page.goto("/")
    assert "Authentication is off" in page.locator("#auth-off").inner_text()  # the demo says so
    # The trained demo model, so the README's pictures show what the prompt says.
    page.select_option("select[name=model]", "demo-shapes")
    page.fill("textarea[name=prompt]", "a red circle on a blue background")
    page.fill("input[name=width]", "128")
    page.fill("input[name=height]", "128")
    page.fill("input[name=steps]", "20")
    page.fill("input[name=seed]", "31337")
    page.select_option("select[name=scheduler]", "ddim")
    submit_form(page, "form.png")
    status = page.locator("#status")
    assert status.get_attribute("data-status") == "succeeded", page.locator("#error").inner_text()
    image = page.locator("img.output").first
    image.wait_for()
    page.wait_for_function("() => document.querySelector('img.output').naturalWidth === 128")
    assert image.get_attribute("alt") == "output 0, seed 31337"
    assert page.locator("#bar").get_attribute("aria-valuenow") == "100"
    assert "step 20 of 20" in page.locator("#steps").inner_text()
    params = page.locator("#params").inner_text()
    assert "ddim" in params and "31337" in params
    page.wait_for_function(  # let the bar's CSS transition finish before the picture
        "() => (b => b.getBoundingClientRect().width === b.parentElement.getBoundingClientRect().width)"
        "(document.querySelector('#bar'))"
    )
    page.screenshot(path=str(ARTIFACTS / "job.png"), full_page=True)
    outside = [u for u in page.requests_seen if not u.startswith(embedded_stack.base_url)]
    assert outside == []


def test_form_errors_are_shown_next_to_fields(page: Any) -> None:
    page.goto("/")
    page.fill("input[name=width]", "100")
    page.click("button[type=submit]")
    assert "multiple of 8" in page.locator("#width-error").inner_text()
    assert "required" in page.locator("#prompt-error").inner_text()
    assert page.input_value("input[name=width]") == "100"


def test_progress_bar_moves_then_the_image_appears(page: Any, embedded_stack: Stack) -> None:
    job = embedded_stack.submit(prompt="watch me", width=512, height=512, steps=40, scheduler="euler", seed=3)
    page.goto(f"/jobs/{job['id']}")
    values: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        values.add(int(page.locator("#bar").get_attribute("aria-valuenow")))
        if page.locator("#status").get_attribute("data-status") in ("succeeded", "failed", "canceled"):
            break
        page.wait_for_timeout(100)
    assert page.locator("#status").get_attribute("data-status") == "succeeded"
    assert {v for v in values if 0 < v < 100}, values  # seen part-way, not only 0 and 100
    page.locator("img.output").wait_for()
    page.wait_for_function("() => document.querySelector('img.output').naturalWidth === 512")
    assert "run time" in page.locator("#timings").inner_text()
    assert page.locator("#cancel").is_hidden()


def test_cancel_from_the_job_page(page: Any, embedded_stack: Stack) -> None:
    job = embedded_stack.submit(prompt="cancel me", width=512, height=512, steps=150, scheduler="euler")
    page.goto(f"/jobs/{job['id']}")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.status === 'running'", timeout=60_000
    )
    page.click("#cancel")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.status === 'canceled'", timeout=60_000
    )
    final = embedded_stack.job(job["id"])
    assert final["status"] == "canceled" and final["progress"]["step"] < 150
    assert page.locator("#cancel").is_hidden()


def test_gallery_links_to_jobs_and_reuses_settings(page: Any, embedded_stack: Stack) -> None:
    prompt = "a yellow triangle on a black background"
    created = embedded_stack.submit(
        model="demo-shapes", prompt=prompt, width=64, height=64, steps=10, seed=99, scheduler="ddim"
    )
    job = embedded_stack.wait(created["id"])
    page.goto("/gallery")
    tile = page.locator(f"a[href='/jobs/{job['id']}']")
    tile.locator("img").wait_for()
    page.screenshot(path=str(ARTIFACTS / "gallery.png"), full_page=True)
    tile.click()
    page.wait_for_url(f"**/jobs/{job['id']}")
    page.click("#reuse")
    assert page.input_value("textarea[name=prompt]") == prompt
    assert page.input_value("input[name=seed]") == "99"
    assert page.locator("select[name=scheduler]").input_value() == "ddim"


def test_paint_a_mask_and_inpaint(page: Any, embedded_stack: Stack) -> None:
    from tests.factories import encode, gradient

    page.goto("/edit")
    page.check("input[name=type][value=inpaint]")
    page.set_input_files(
        "#image-file",
        files=[{"name": "in.png", "mimeType": "image/png", "buffer": encode(gradient(128, 128))}],
    )
    canvas = page.locator("#mask-canvas")
    canvas.wait_for()
    box = canvas.bounding_box()
    page.fill("#brush", "20")
    # One stroke across the middle of the image.
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.fill("textarea[name=prompt]", "a stripe")
    page.fill("input[name=steps]", "6")
    page.fill("input[name=mask_blur]", "0")
    submit_form(page, "inpaint-form.png")
    assert page.locator("#status").get_attribute("data-status") == "succeeded"
    page.locator("img.output").wait_for()
    page.locator("img.input-mask").wait_for()
    job = embedded_stack.job(page.url.rsplit("/", 1)[1])
    assert job["type"] == "inpaint" and (job["params"]["width"], job["params"]["height"]) == (128, 128)
    mask = np.asarray(Image.open(io.BytesIO(requests.get(job["inputs"]["mask"], timeout=10).content)))
    assert mask[64, 64] == 255 and mask[64, 10] == 0 and mask[10, 64] == 0  # painted stripe only
    out = np.asarray(Image.open(io.BytesIO(requests.get(job["outputs"][0]["url"], timeout=10).content)))
    source = np.asarray(gradient(128, 128))
    keep = mask == 0
    assert np.array_equal(out[keep], source[keep])
    page.screenshot(path=str(ARTIFACTS / "inpaint-job.png"), full_page=True)


def test_edit_page_shows_errors_next_to_fields(page: Any) -> None:
    page.goto("/edit")
    page.check("input[name=type][value=inpaint]")
    page.fill("textarea[name=prompt]", "no image")
    page.click("button[type=submit]")
    assert "required for inpaint" in page.locator("#image-error").inner_text()
    assert "required for inpaint" in page.locator("#mask-error").inner_text()


def test_api_docs_page_loads_with_no_external_requests(page: Any, embedded_stack: Stack) -> None:
    page.goto("/docs")
    title = page.locator(".swagger-ui .info .title")
    title.wait_for(timeout=30_000)
    assert "Easel" in title.inner_text()
    page.locator(".opblock-summary-path", has_text="/api/v1/jobs").first.wait_for()
    post = page.locator(".opblock-post .opblock-summary").first
    post.click()
    examples = page.locator(".examples-select select").first  # the request examples of each job type
    examples.wait_for()
    options = examples.inner_text().lower()
    assert all(f"{kind}: " in options for kind in ("txt2img", "img2img", "inpaint", "upscale"))
    page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=False)
    outside = [u for u in page.requests_seen if not u.startswith(embedded_stack.base_url)]
    assert outside == []


def test_the_job_page_shows_the_live_preview_changing_before_the_job_finishes(
    page: Any, embedded_stack: Stack
) -> None:
    """The page follows the event stream; the preview changes at least once while running."""
    # About 6 s on an idle 2-core machine: time for the page to see several previews.
    job = embedded_stack.submit(prompt="a slow sunrise", width=320, height=320, steps=150, seed=5)
    page.goto(f"/jobs/{job['id']}")
    running = (
        "!['succeeded', 'failed', 'canceled'].includes(document.querySelector('#status').dataset.status)"
    )
    shown = (
        "(i => i.dataset.step && i.complete && i.naturalWidth === 320)(document.querySelector('#preview'))"
    )
    page.wait_for_function(f"() => {shown} && {running}", timeout=240_000)
    first = page.locator("#preview").get_attribute("data-step")
    page.wait_for_function(
        f"first => {shown} && document.querySelector('#preview').dataset.step !== first && {running}",
        arg=first,
        timeout=240_000,
    )
    second = page.locator("#preview").get_attribute("data-step")
    assert first is not None and second is not None and int(second) > int(first)
    page.screenshot(path=str(ARTIFACTS / "job-preview.png"), full_page=True)
    page.click("#cancel")  # no need to wait for the rest: the stream ends with the job
    wait_until_finished(page)
    assert page.locator("#status").get_attribute("data-status") == "canceled"
    assert page.locator("#preview-section").is_hidden()  # a finished job shows no preview
    assert any(f"/api/v1/jobs/{job['id']}/events" in u for u in page.requests_seen)  # type: ignore[attr-defined]


ADAPTER_MODELS = """
[models.bare]
source = "directory"
location = '{model}'
max_size = 512

[models.tiny-sd]
source = "directory"
location = '{model}'
max_size = 512

[loras.ink]
location = '{lora}'
models = ["tiny-sd"]

[vaes.mse]
location = '{vae}'
models = ["tiny-sd"]
"""


@pytest.fixture(scope="module")
def adapter_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_lora: Path
) -> Iterator[Stack]:
    """web + worker with a models file: ``bare``, which no adapter fits (the default), and
    ``tiny-sd``, which the LoRA ``ink`` and the VAE ``mse`` fit (tests/adapter_models.py)."""
    from tests.adapter_models import build_tiny_vae
    from tests.factories import make_stack

    home = tmp_path_factory.mktemp("form-adapters-stack")
    vae = build_tiny_vae(tiny_model, home / "mse.safetensors")
    models = home / "form-adapters.toml"
    models.write_text(ADAPTER_MODELS.format(model=tiny_model, lora=tiny_lora, vae=vae))
    env = {"EASEL_AUTH_ENABLED": "false", "EASEL_MODELS_FILE": str(models), "EASEL_DEFAULT_MODEL": "bare"}
    yield from make_stack(home, tiny_model, env).running(worker=True)


def test_the_form_offers_the_loras_and_vaes_that_fit_the_model(browser: Any, adapter_stack: Stack) -> None:
    context = browser.new_context(base_url=adapter_stack.base_url)
    page = context.new_page()
    try:
        page.goto("/")
        lora = page.locator("#lora-picker input[type=checkbox][value=ink]")
        weight = page.get_by_label("Weight of ink")
        vae = page.locator("select[name=vae]")
        # bare: nothing fits it; the picker replaces the text field and says so
        assert page.locator("select[name=model]").input_value() == "bare"
        assert page.locator("#lora-none").is_visible() and lora.count() == 0
        assert page.locator("input[name=loras]").is_hidden()
        assert page.locator("#vae-none").is_visible() and vae.locator("option").all_inner_texts() == [
            "the model's own"
        ]
        page.select_option("select[name=model]", "tiny-sd")  # the choices follow, no reload
        assert page.locator("#lora-none").is_hidden() and page.locator("#vae-none").is_hidden()
        assert vae.locator("option").all_inner_texts() == ["the model's own", "mse"]
        assert weight.is_disabled()
        page.get_by_label("ink", exact=True).check()
        page.fill("input[aria-label='Weight of ink']", "0.5")
        page.select_option("select[name=vae]", "mse")
        assert page.input_value("input[name=loras]") == "ink:0.5"
        page.select_option("select[name=model]", "bare")  # the picks do not fit: left out, said so
        assert page.input_value("input[name=loras]") == "" and vae.input_value() == ""
        assert "ink" in page.locator("#lora-left-out").inner_text()
        page.select_option("select[name=model]", "tiny-sd")  # and come back with a model they fit
        assert page.input_value("input[name=loras]") == "ink:0.5" and vae.input_value() == "mse"
        assert lora.is_checked() and page.input_value("input[aria-label='Weight of ink']") == "0.5"
        page.fill("textarea[name=prompt]", "a red box")
        for name, value in (("width", "64"), ("height", "64"), ("steps", "3"), ("seed", "5")):
            page.fill(f"input[name={name}]", value)
        page.screenshot(path=str(ARTIFACTS / "form-adapters.png"), full_page=True)
        page.click("button[type=submit]")
        page.wait_for_url("**/jobs/*", timeout=120_000)  # a loaded machine is slow to answer the post
        page.locator("#status").wait_for()
        wait_until_finished(page)
        job = adapter_stack.job(page.url.rsplit("/", 1)[1])
        assert job["status"] == "succeeded", job
        assert job["model"] == "tiny-sd" and job["params"]["vae"] == "mse"
        assert job["params"]["loras"] == [{"name": "ink", "weight": 0.5}]
        params = page.locator("#params").inner_text()
        assert "vae\tmse" in params and "loras\tink:0.5" in params
        page.goto(f"/?from={job['id']}")  # filled from the job: its LoRA and VAE picked again
        assert page.locator("select[name=model]").input_value() == "tiny-sd"
        assert lora.is_checked() and page.input_value("input[aria-label='Weight of ink']") == "0.5"
        assert vae.input_value() == "mse"
    finally:
        context.close()
    # Without script: the text field and the server-rendered choices, filled from the job.
    context = browser.new_context(base_url=adapter_stack.base_url, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"/?from={job['id']}")
        assert page.locator("#lora-picker").is_hidden() and page.input_value("input[name=loras]") == "ink:0.5"
        assert "LoRAs that fit this model: ink" in page.locator("#loras-hint").inner_text()
        assert page.locator("select[name=vae]").input_value() == "mse"
        page.screenshot(path=str(ARTIFACTS / "form-adapters-no-script.png"), full_page=True)
        page.click("button[type=submit]")
        page.wait_for_url("**/jobs/*", timeout=120_000)  # a loaded machine is slow to answer the post
        again = adapter_stack.job(page.url.rsplit("/", 1)[1])
        assert again["params"]["loras"] == job["params"]["loras"] and again["params"]["vae"] == "mse"
    finally:
        context.close()
