"""Browser fixtures shared by the e2e modules: a real headless chromium (Debian's) and a
fresh page on the embedded stack per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.processes import ROOT, Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Screenshots go to the ignored tests/artifacts only, so a test run changes no tracked file.
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
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
    """A page of its own on the embedded stack; ``page.requests_seen`` lists the URLs it
    asked for."""
    context = browser.new_context(base_url=embedded_stack.base_url)
    page = context.new_page()
    page.requests_seen = []
    page.on("request", lambda r: page.requests_seen.append(r.url))
    yield page
    context.close()
