"""The web console in a real headless Chromium: the REST side against the relay, and the
terminal end to end with real mosquitto, the device agent and OpenSSH's sshd."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from relay.web.console import CONTENT_SECURITY_POLICY
from tests.conftest import TOKEN_A, TOKEN_B
from tests.device.conftest import SSH_PASSWORD, SSH_USER

TERMINAL_TIMEOUT_MS = 30_000


# -- without a browser ------------------------------------------------------------------------


async def test_files_are_served_with_a_strict_policy(relay):
    for path, kind in [("/console", "text/html"), ("/console/app.js", "text/javascript"),
                       ("/console/terminal.js", "text/javascript"), ("/console/style.css", "text/css"),
                       ("/console/favicon.svg", "image/svg+xml")]:
        async with relay.client.get(path) as resp:
            assert resp.status == 200, path
            assert resp.content_type == kind
            csp = resp.headers["Content-Security-Policy"]
            assert csp == CONTENT_SECURITY_POLICY
            assert "default-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert len(await resp.read()) > 100
    for bad in ("/console/nope.js", "/console/..%2Fconsole.py", "/console/%2e%2e", "/console/console.py"):
        async with relay.client.get(bad) as resp:
            assert resp.status == 404, bad
            assert (await resp.json())["error_code"] == "TUNNEL.404001"
    async with relay.client.get("/console/", allow_redirects=False) as resp:
        assert resp.status == 308 and resp.headers["Location"] == "/console"


# -- in Chromium ------------------------------------------------------------------------------


async def log_in(page, relay, project: str = "proj-a", token: str = TOKEN_A) -> None:  # type: ignore[no-untyped-def]
    await page.goto(relay.url + "/console")
    await page.fill("#login-project", project)
    await page.fill("#login-token", token)
    await page.click("#login-submit")


def row(page, tunnel_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'tr[data-tunnel-id="{tunnel_id}"]')


async def confirm(page) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_selector("#confirm-dialog[open]")
    await page.click("#confirm-ok")


async def refresh_until(page, tunnel_id: str, cell: str, text: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Press Refresh until the tunnel's `cell` reads `text`."""
    deadline = time.monotonic() + timeout
    while True:
        await page.click("#refresh")
        await asyncio.sleep(0.3)
        if (await row(page, tunnel_id).locator(cell).inner_text()).strip() == text:
            return
        assert time.monotonic() < deadline, f"{cell} of {tunnel_id} never read {text}"
        await asyncio.sleep(0.5)


async def screen_lines(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [line.rstrip() for line in (await page.inner_text("#screen")).split("\n")]


async def wait_for_line(page, line: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    """A line of terminal output that is exactly `line` (so not the echo of the command typed)."""
    deadline = time.monotonic() + timeout
    while line not in await screen_lines(page):
        assert time.monotonic() < deadline, f"{line!r} not in the terminal:\n" + "\n".join(await screen_lines(page))
        await asyncio.sleep(0.2)


async def ssh_login(page) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_selector("#term-state:text-is('device connected')", timeout=TERMINAL_TIMEOUT_MS)
    await page.fill("#ssh-user", SSH_USER)
    await page.fill("#ssh-password", SSH_PASSWORD)
    await page.click("#ssh-connect")
    await page.wait_for_selector("#term-state:text-is('logged in')", timeout=TERMINAL_TIMEOUT_MS)
    assert await page.input_value("#ssh-password") == ""      # not kept once used
    # the prompt; not wait_for_function: its polling evaluates a string, which the CSP refuses
    await page.wait_for_selector("#screen:has-text('$')")


@pytest.mark.timeout(240)
async def test_tunnel_and_terminal_end_to_end(relay_factory, mosquitto, sshd, agent_factory, console_page, tmp_path):
    page, problems = console_page
    relay = await relay_factory(mqtt_url=mosquitto.url)
    await agent_factory("console-dev", mosquitto.url, ssh_port=sshd.port)

    await log_in(page, relay)
    await page.wait_for_selector("#tunnels-view", state="visible")
    assert await page.inner_text("#session-project") == "proj-a"
    # the API token stays out of URLs and out of persistent storage
    assert TOKEN_A not in page.url
    assert await page.evaluate("localStorage.length") == 0
    assert await page.evaluate("document.cookie") == ""

    # create
    await page.click("#new-tunnel")
    await page.fill("#create-device", "console-dev")
    await page.fill("#create-description", "created from the console test")
    await page.click("#create-submit")
    await page.wait_for_selector("#secrets", state="visible")
    listed = (await relay.call("GET", "/v5/iot/proj-a/tunnels?device_id=console-dev"))[1]["tunnels"]
    assert len(listed) == 1
    tunnel_id = listed[0]["tunnel_id"]
    assert tunnel_id in await page.inner_text("#secrets-list")
    assert await row(page, tunnel_id).locator(".col-status").inner_text() == "OPEN"

    # the agent got the MQTT notify and connected its end
    await refresh_until(page, tunnel_id, ".col-device-state", "connected")
    assert await row(page, tunnel_id).locator(".col-source").inner_text() == "not connected"
    assert await row(page, tunnel_id).locator(".col-notify").inner_text() == "sent to broker"

    # the terminal, with the source token of the create answer
    await page.click("#secrets-terminal")
    await ssh_login(page)
    await page.click("#screen")
    await page.keyboard.type("echo console-ok")
    await page.keyboard.press("Enter")
    await wait_for_line(page, "console-ok")
    await refresh_until(page, tunnel_id, ".col-source", "connected")

    # Ctrl-C interrupts the running command; Backspace edits the line
    await page.click("#screen")    # Refresh took the focus
    await page.keyboard.type("sleep 60")
    await page.keyboard.press("Enter")
    await asyncio.sleep(0.5)
    await page.keyboard.press("Control+c")
    await page.keyboard.type("echo after-ctrl-cX")
    await page.keyboard.press("Backspace")
    await page.keyboard.press("Enter")
    await wait_for_line(page, "after-ctrl-c", timeout=10)   # not 60 s later; and without the X
    await page.keyboard.type("printf '\\033[31mred\\033[0m plain\\n'")
    await page.keyboard.press("Enter")
    await wait_for_line(page, "red plain")                  # colour codes stripped

    shot = tmp_path / "console.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # an existing tunnel: "Terminal" rotates the source token first (the old one stops working)
    await page.click("#term-close")
    await row(page, tunnel_id).get_by_role("button", name="Terminal").click()
    await page.wait_for_selector("#confirm-dialog[open]")
    assert "rotates" in await page.inner_text("#confirm-text")
    await page.click("#confirm-ok")
    await ssh_login(page)
    assert "rotated" in await page.inner_text("#term-note")
    await page.click("#screen")
    await page.keyboard.type("echo again-$((20+3))")
    await page.keyboard.press("Enter")
    await wait_for_line(page, "again-23")
    await page.click("#term-logout")          # ends the SSH session, keeps the tunnel connection
    await page.wait_for_selector("#ssh-form", state="visible")
    assert await page.inner_text("#term-state") == "device connected"

    # close the tunnel: the terminal shows the relay's reason, the table the new status
    await row(page, tunnel_id).get_by_role("button", name="Close").click()
    await confirm(page)
    await page.wait_for_selector("#term-state:text-is('closed')", timeout=TERMINAL_TIMEOUT_MS)
    reason = await page.inner_text("#term-message")
    assert "Disconnected (410): the tunnel was closed" in reason and "code 1000" in reason, reason
    await page.wait_for_selector(f'tr[data-tunnel-id="{tunnel_id}"] .col-status:has-text("CLOSED")')
    info = (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{tunnel_id}"))[1]
    assert info["status"] == "CLOSED" and info["close_reason"] == "closed"

    # delete it
    await row(page, tunnel_id).get_by_role("button", name="Delete").click()
    await confirm(page)
    await row(page, tunnel_id).wait_for(state="detached")
    assert (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{tunnel_id}"))[0] == 404
    assert problems.unexpected() == []


@pytest.mark.timeout(180)
async def test_login_search_batch_close_and_delete(relay, console_page, tmp_path):
    page, problems = console_page
    ids = [(await relay.create(f"fleet-{n}"))["tunnel_id"] for n in range(3)]
    other = (await relay.create("other-device"))["tunnel_id"]

    # a token of another project is refused, with the reason
    await log_in(page, relay, token=TOKEN_B)
    await page.wait_for_selector("#login-error:has-text('refused')")
    await page.screenshot(path=str(tmp_path / "login.png"))
    assert await page.is_hidden("#tunnels-view")
    await page.fill("#login-token", TOKEN_A)
    await page.click("#login-submit")
    await page.wait_for_selector("#tunnels-view", state="visible")
    for tunnel_id in ids + [other]:
        await row(page, tunnel_id).wait_for()

    # a reload keeps the session (sessionStorage of this tab)
    await page.reload()
    await page.wait_for_selector("#tunnels-view", state="visible")
    await row(page, other).wait_for()

    # search by device id, then by tunnel id
    await page.fill("#search", "other-device")
    await page.press("#search", "Enter")
    await row(page, ids[0]).wait_for(state="detached")
    assert await page.locator("#tunnel-rows tr").count() == 1
    await page.fill("#search", ids[1])
    await page.press("#search", "Enter")
    await row(page, ids[1]).wait_for()
    assert await page.locator("#tunnel-rows tr").count() == 1
    await page.fill("#search", "")
    await page.press("#search", "Enter")
    await row(page, other).wait_for()

    # batch close two of them, then try to delete all (open ones fail, and say why)
    for tunnel_id in ids[:2]:
        await row(page, tunnel_id).locator("input[type=checkbox]").check()
    assert await page.inner_text("#batch-count") == "2 selected"
    await page.click("#batch-close")
    await confirm(page)
    for tunnel_id in ids[:2]:
        await page.wait_for_selector(f'tr[data-tunnel-id="{tunnel_id}"] .col-status:has-text("CLOSED")')
    assert await row(page, ids[2]).locator(".col-status").inner_text() == "OPEN"
    await page.check("#select-all")
    assert await page.inner_text("#batch-count") == "4 selected"
    await page.click("#batch-delete")
    await page.wait_for_selector("#confirm-dialog[open]")
    await page.screenshot(path=str(tmp_path / "batch-delete.png"))
    await page.click("#confirm-ok")
    await page.wait_for_selector("#toast:has-text('2 done, 2 failed')")
    for tunnel_id in ids[:2]:
        await row(page, tunnel_id).wait_for(state="detached")
    assert await page.locator("#tunnel-rows tr").count() == 2

    # rotate from the table: the new token is shown once
    await row(page, other).get_by_role("button", name="Rotate").click()
    await page.wait_for_selector("#confirm-dialog[open]")
    await page.select_option("#rotate-side", "source")
    await page.click("#confirm-ok")
    await page.wait_for_selector("#secrets-title:text-is('Tokens rotated')")
    token = (await page.locator("#secrets-list dd").nth(1).inner_text()).strip()
    assert re.fullmatch(r"[\x21-\x7e]{20,256}", token)

    # paging: 20 a page
    for n in range(19):
        await relay.create(f"bulk-{n}")
    await page.click("#refresh")
    await page.wait_for_selector("#page-info:text-is('1–20 of 21')")
    assert await page.locator("#tunnel-rows tr").count() == 20
    await page.click("#next-page")
    await page.wait_for_selector("#page-info:text-is('21–21 of 21')")
    assert await page.is_disabled("#next-page")
    await page.click("#prev-page")
    await page.wait_for_selector("#page-info:text-is('1–20 of 21')")

    # log out forgets the token
    await page.click("#logout")
    await page.wait_for_selector("#login-view", state="visible")
    assert await page.evaluate("sessionStorage.length") == 0
    assert problems.unexpected("Failed to load resource") == []
