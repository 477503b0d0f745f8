"""A real headless chromium fills the form, submits, and sees the image on the job page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, Stack

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is needed at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, embedded_stack: Stack) -> Iterator[Any]:
    context = browser.new_context(base_url=embedded_stack.base_url)
    page = context.new_page()
    page.requests_seen = []  # type: ignore[attr-defined]
    page.on("request", lambda r: page.requests_seen.append(r.url))  # type: ignore[attr-defined]
    yield page
    context.close()


def test_form_submit_shows_the_finished_image(page: Any, embedded_stack: Stack) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto("/")
    page.fill("textarea[name=prompt]", "a lighthouse on a cliff")
    page.fill("input[name=width]", "128")
    page.fill("input[name=height]", "96")
    page.fill("input[name=steps]", "8")
    page.fill("input[name=seed]", "31337")
    page.select_option("select[name=scheduler]", "dpmpp_2m")
    page.screenshot(path=str(ARTIFACTS / "form.png"), full_page=True)
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/*")
    status = page.locator("#status")
    status.wait_for()
    page.wait_for_function(
        "document.querySelector('#status').dataset.status === 'succeeded'", timeout=120_000
    )
    image = page.locator("img.output").first
    image.wait_for()
    page.wait_for_function("document.querySelector('img.output').naturalWidth === 128")
    assert image.get_attribute("alt") == "output 0, seed 31337"
    assert page.locator("#bar").get_attribute("aria-valuenow") == "100"
    assert "step 8 of 8" in page.locator("#steps").inner_text()
    params = page.locator("#params").inner_text()
    assert "dpmpp_2m" in params and "31337" in params
    page.wait_for_function(  # let the bar's CSS transition finish before the picture
        "(b => b.getBoundingClientRect().width === b.parentElement.getBoundingClientRect().width)"
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
