"""Browser fixtures: the dashboard served on loopback by real uvicorn, driven by Debian's
headless Chromium through Playwright (never a downloaded browser build)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import catalog, data_dir  # noqa: F401 (fixtures for the real-training test)
from tests.integration.api.live import TOKEN, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    profile = tempfile.mkdtemp(prefix="skutrain-chromium-")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900})
        context.set_default_timeout(10_000)
        try:
            yield context
        finally:
            await context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
async def site(db_url):
    async with serving(db_url, stream_poll=0.1) as base:
        yield base


@pytest.fixture
async def page(browser, site):
    """A page logged in to the dashboard (the token travels in the URL fragment, never sent).
    Every asset must come from the dashboard itself: a request elsewhere fails the test."""
    page = browser.pages[0] if browser.pages else await browser.new_page()
    page.base = site
    elsewhere = []
    page.on("request", lambda request: None if request.url.startswith((site, "data:"))
            else elsewhere.append(request.url))
    await page.goto(f"{site}/login#token={TOKEN}")
    await page.wait_for_url(f"{site}/")
    yield page
    assert not elsewhere, f"the page fetched from outside the server: {elsewhere}"


async def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
