"""A real headless chromium on the upscale page and the txt2img form's hires fields: it
uploads, picks, submits, and sees the result and the settings on the job page."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from bench.processes import ROOT, Stack
from tests.factories import encode, gradient

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ARTIFACTS = ROOT / "tests" / "artifacts"  # ignored: a test run changes no tracked file

TERMINAL = "['succeeded', 'failed', 'canceled'].includes(document.querySelector('#status').dataset.status)"


def submit_and_wait(page: Any, picture: str) -> dict[str, Any]:
    """Screenshots the filled form as ``picture``, submits it, waits on the job page until
    the job has finished there: its id (from the page's address) and status."""
    page.screenshot(path=str(ARTIFACTS / picture), full_page=True)
    with page.expect_navigation(timeout=120_000):  # a loaded machine is slow to answer the post
        page.click("button[type=submit]")
    if "/jobs/" not in page.url:  # the form came back: say why
        refused = page.locator(".error-summary, .field-error").all_inner_texts()
        pytest.fail(f"the form was refused: {refused}")
    page.locator("#status").wait_for()
    page.wait_for_function(f"() => {TERMINAL}", timeout=120_000)
    return {"id": page.url.rsplit("/", 1)[1], "status": page.locator("#status").get_attribute("data-status")}


def shown_output(page: Any, width: int, height: int) -> None:
    """Waits until the job page shows its first output loaded at ``width`` x ``height``."""
    page.locator("img.output").first.wait_for()
    page.wait_for_function(
        "([w, h]) => (i => i.complete && i.naturalWidth === w && i.naturalHeight === h)"
        "(document.querySelector('img.output'))",
        arg=[width, height],
    )


def picture(url: str) -> np.ndarray[Any, Any]:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_the_upscale_page_upscales_an_uploaded_image(page: Any, embedded_stack: Stack) -> None:
    source = gradient(48, 32)
    page.goto("/upscale")
    page.set_input_files(
        "input[name=image]", files=[{"name": "small.png", "mimeType": "image/png", "buffer": encode(source)}]
    )
    upscalers = page.locator("select[name=upscaler] option").all_inner_texts()
    assert "lanczos" in upscalers, upscalers
    page.select_option("select[name=upscaler]", "lanczos")
    page.fill("input[name=scale]", "2.5")
    job = submit_and_wait(page, "upscale-form.png")
    assert job["status"] == "succeeded", page.locator("#error").inner_text()
    shown_output(page, 120, 80)
    params = page.locator("#params").inner_text()
    assert "type\tupscale" in params and "upscaler\tlanczos" in params and "scale\t2.5" in params
    recorded = embedded_stack.job(job["id"])
    assert recorded["type"] == "upscale" and recorded["params"]["upscaler"] == "lanczos"
    assert (recorded["outputs"][0]["width"], recorded["outputs"][0]["height"]) == (120, 80)
    # The pixels are the source's, resampled: Pillow's Lanczos of what was uploaded.
    expected = np.asarray(source.resize((120, 80), Image.Resampling.LANCZOS))
    assert np.array_equal(picture(recorded["outputs"][0]["url"]), expected)
    # "Use these settings again" leads back to the upscale page, not the txt2img form.
    page.wait_for_function("() => new URL(document.querySelector('#reuse').href).pathname === '/upscale'")
    page.screenshot(path=str(ARTIFACTS / "upscale-job.png"), full_page=True)
    outside = [u for u in page.requests_seen if not u.startswith(embedded_stack.base_url)]
    assert outside == []


def test_the_upscale_page_shows_errors_next_to_fields(page: Any) -> None:
    page.goto("/upscale")
    page.fill("input[name=scale]", "2")
    page.click("button[type=submit]")
    assert page.locator("#image-error").inner_text().strip()  # no image: said next to the field
    assert page.input_value("input[name=scale]") == "2"
    page.set_input_files(
        "input[name=image]", files=[{"name": "in.png", "mimeType": "image/png", "buffer": encode(gradient())}]
    )
    page.fill("input[name=scale]", "big")
    page.click("button[type=submit]")
    assert page.locator("#scale-error").inner_text().strip()
    assert page.input_value("input[name=scale]") == "big"


HIRES_FIELDS = {"hires_scale": "2", "hires_steps": "6", "hires_denoising_strength": "0.5"}


def test_the_hires_fields_reach_the_job_and_come_back(page: Any, embedded_stack: Stack) -> None:
    page.goto("/")
    assert page.locator("details:has(#hires-fields)").get_attribute("open") is not None
    page.fill("textarea[name=prompt]", "a lighthouse at dusk")
    for name, value in (("width", "64"), ("height", "64"), ("steps", "4"), ("seed", "11")):
        page.fill(f"input[name={name}]", value)
    page.check("input[name=hires]")
    for name, value in HIRES_FIELDS.items():
        page.fill(f"input[name={name}]", value)
    assert "lanczos" in page.locator("select[name=hires_upscaler] option").all_inner_texts()
    page.select_option("select[name=hires_upscaler]", "lanczos")
    job = submit_and_wait(page, "hires-form.png")
    assert job["status"] == "succeeded", page.locator("#error").inner_text()
    shown_output(page, 128, 128)  # drawn at 64, redrawn at twice that
    # One progress count over both passes: 4 steps, then 6 at strength 0.5.
    assert "step 7 of 7" in page.locator("#steps").inner_text()
    params = page.locator("#params").inner_text()
    hires_row = next(line for line in params.splitlines() if line.startswith("hires\t"))
    for part in ("width 128", "height 128", "upscaler lanczos", "steps 6", "denoising_strength 0.5"):
        assert part in hires_row, hires_row
    recorded = embedded_stack.job(job["id"])
    assert recorded["params"]["hires"] == {
        "width": 128,
        "height": 128,
        "upscaler": "lanczos",
        "steps": 6,
        "denoising_strength": 0.5,
    }
    assert (recorded["params"]["width"], recorded["params"]["height"]) == (64, 64)
    page.screenshot(path=str(ARTIFACTS / "hires-job.png"), full_page=True)

    # "Use these settings again": the form comes back with the hires fix on, its resolved
    # target size and its upscaler, steps and strength.
    page.click("#reuse")
    page.wait_for_url(f"**/?from={job['id']}")
    assert page.locator("input[name=hires]").is_checked()
    refilled = {
        name: page.input_value(f"input[name={name}]")
        for name in ("hires_width", "hires_height", "hires_steps", "hires_denoising_strength")
    }
    assert refilled == {
        "hires_width": "128",
        "hires_height": "128",
        "hires_steps": "6",
        "hires_denoising_strength": "0.5",
    }
    assert page.locator("select[name=hires_upscaler]").input_value() == "lanczos"
    assert page.input_value("input[name=width]") == "64" and page.input_value("input[name=seed]") == "11"
    again = submit_and_wait(page, "hires-form-again.png")
    assert again["status"] == "succeeded", page.locator("#error").inner_text()
    shown_output(page, 128, 128)
    assert embedded_stack.job(again["id"])["params"] == recorded["params"]


def test_a_hires_field_error_is_shown_next_to_it(page: Any) -> None:
    page.goto("/")
    page.fill("textarea[name=prompt]", "too big")
    page.check("input[name=hires]")
    page.fill("input[name=hires_scale]", "9")
    page.click("button[type=submit]")
    error = page.locator("[id='hires.scale-error']")
    assert error.inner_text().strip()
    assert page.locator("input[name=hires]").is_checked()
    assert page.input_value("input[name=hires_scale]") == "9"
