"""A real headless Chromium (Debian's `chromium`) driven by Playwright, for the web console.

Playwright's own browser downloads are not used: the browser is the system's, found on PATH
(or `RELAY_TEST_CHROMIUM`). Tests skip when Playwright or Chromium is missing; the packages
come from scripts/install-system-deps.sh and the `test` extra."""

from __future__ import annotations

import os
import shutil

import pytest

# The real parts of tests/device: mosquitto, sshd and the in-process device agent.
from tests.device.conftest import agent_factory, mosquitto, sshd  # noqa: F401

LAUNCH_TIMEOUT_MS = 90_000   # Chromium's first start on a busy 2-core machine can take a while
ACTION_TIMEOUT_MS = 20_000


def chromium_path() -> str:
    found = os.environ.get("RELAY_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        missing("chromium is not installed: run scripts/install-system-deps.sh")
    return found


def missing(why: str) -> None:
    """Outside CI a missing browser skips; in CI (CI=true, where `make test` installs it) it fails."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
async def browser():
    try:
        import playwright.async_api as playwright_api
    except ImportError:
        missing("playwright is not installed: pip install -e '.[test]'")
    executable = chromium_path()
    async with playwright_api.async_playwright() as pw:
        args = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]   # root in a container
        instance = await pw.chromium.launch(executable_path=executable, headless=True, args=args,
                                            timeout=LAUNCH_TIMEOUT_MS)
        try:
            yield instance
        finally:
            await instance.close()


class PageProblems:
    """Errors the page reports: script exceptions, console errors (CSP violations among them)."""

    def __init__(self, page) -> None:  # type: ignore[no-untyped-def]
        self.items: list[str] = []
        page.on("pageerror", lambda exc: self.items.append(f"page error: {exc}"))
        page.on("console", lambda msg: self.items.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" else None)

    def unexpected(self, *allowed: str) -> list[str]:
        return [p for p in self.items if not any(a in p for a in allowed)]


@pytest.fixture
async def console_page(browser):
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    problems = PageProblems(page)
    try:
        yield page, problems
    finally:
        await context.close()
