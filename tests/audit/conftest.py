"""Fixtures of the audit tests: every store (SQLite, and a real Redis); the `relay` command."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid

import pytest

from relay.store.redis import RedisStore
from relay.store.sqlite import SqliteStore
from tests.conftest import TOKEN_A
from tests.test_serve import clean_env


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "store.db"))
    else:
        server = request.getfixturevalue("redis_server")
        s = RedisStore(server.url, prefix=f"audit-{uuid.uuid4().hex[:8]}:")
    yield s
    await s.aclose()


class Cli:
    """`relay ...` in a subprocess, aimed at the relay of the test through the environment
    (like tests/client's, without its device-side fixtures)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def run(self, *args: str, timeout: float = 40, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", *args, env={**self.env, **(env or {})},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.communicate()
            raise AssertionError(f"relay {' '.join(args)} did not finish within {timeout} s") from None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def cli(relay) -> Cli:  # type: ignore[no-untyped-def]
    return Cli(clean_env(RELAY_URL=relay.url, RELAY_API_TOKEN=TOKEN_A, RELAY_PROJECT="proj-a"))


# -- a real headless Chromium, as tests/console drives it (Debian's chromium through Playwright;
# no downloaded browser), without tests/console's device-side fixtures -----------------------

LAUNCH_TIMEOUT_MS = 90_000
ACTION_TIMEOUT_MS = 20_000


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
async def audit_page():  # type: ignore[no-untyped-def]
    """(page, problems): a Chromium page, and the errors it reports (CSP violations among them)."""
    try:
        import playwright.async_api as playwright_api
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[test]'")
    executable = os.environ.get("RELAY_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        _missing("chromium is not installed: run scripts/install-system-deps.sh")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, headless=True, timeout=LAUNCH_TIMEOUT_MS,
                                           args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            context = await browser.new_context(viewport={"width": 1360, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(ACTION_TIMEOUT_MS)
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type == "error" else None)
            yield page, problems
        finally:
            await browser.close()
