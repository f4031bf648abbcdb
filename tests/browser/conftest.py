"""Shared browser fixtures: Debian's /usr/bin/chromium, headless, driven by Playwright.

Browser tests skip when Chromium is missing, except on CI, where they must run.
Screenshots of page states go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Playwright adds --headless (the new headless mode: the only one in current Chromium) and its own temporary
# profile (--user-data-dir is refused: each launch gets a fresh one).
BASE_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not Path(CHROMIUM).exists() and os.environ.get("CI"):
    raise RuntimeError("CI must run the browser tests, but Chromium is missing: .ci/run installs it")

requires_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium); .ci/run installs it"
)

# launch(args, **context_options) -> a page in a new browser; page errors fail the test at teardown
Launch = Callable[..., Awaitable[Any]]


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    from playwright.async_api import async_playwright

    errors: list[str] = []
    browsers: list[Any] = []
    async with async_playwright() as pw:

        async def start(args: list[str] | None = None, **context: Any) -> Any:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*BASE_ARGS, *(args or [])])
            browsers.append(browser)
            ctx = await browser.new_context(**{"viewport": {"width": 420, "height": 820}, **context})
            page = await ctx.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            return page

        yield start
        for browser in browsers:
            await browser.close()
    assert errors == [], errors


@pytest.fixture
async def page(launch: Launch) -> Any:
    return await launch()


async def screenshot(page: Any, name: str) -> Path:
    """Save the page as ``test-artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
