"""The console's audit view and session player in a real headless Chromium, against a relay
whose audit log the test fills (the data-plane hooks have their own end-to-end tests)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from relay.audit import EventType
from relay.clock import format_time
from relay.recording import SessionRecorder
from relay.web.audit_rest import AUDIT
from relay.web.console import CONTENT_SECURITY_POLICY
from tests.conftest import TOKEN_A

PASSWORD = "never-shown-pw-6f1c"
OUTPUT = ["Linux dev-1 6.1.0\r\n", "pi@dev-1:~$ ", "echo hello\r\n", "hello\r\n", "pi@dev-1:~$ "]


async def test_the_audit_module_is_served_with_the_policy(relay):
    async with relay.client.get("/console/audit.js") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
        assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "export class AuditView" in await resp.text()


def record_session(relay, tunnel_id: str) -> str:  # type: ignore[no-untyped-def]
    start = relay.clock.now()
    rec = SessionRecorder("5e551011aaaabbbbccccddddeeeeffff", "proj-a", tunnel_id, "dev-1", start, 1 << 20,
                          width=128, height=30)
    script = [
        (0.0, "source", "connect", {"username": "pi", "password": PASSWORD}),
        (0.3, "device", "connect_response", {"status_code": "200", "status_msg": "logged in"}),
        (0.4, "device", "command_response", OUTPUT[0]),
        (0.5, "device", "command_response", OUTPUT[1]),
        (4.0, "source", "command", "echo hello\r"),
        (4.1, "device", "command_response", OUTPUT[2]),
        (4.2, "device", "command_response", OUTPUT[3]),
        (4.3, "device", "command_response", OUTPUT[4]),
        (30.0, "source", "disconnect", {"status_code": "200"}),
    ]
    for n, (at, side, operation, data) in enumerate(script):
        payload = orjson.dumps({"operation_type": operation, "tunnel_service_type": "ssh", "request_id": f"r{n}",
                                "data": data})
        rec.observe(side, payload, start + at)
    relay.client.server.app[AUDIT].save_recording(rec.finish(start + 30))
    return rec.session_id


async def seed(relay, tunnel_id: str, other_tunnel: str) -> str:  # type: ignore[no-untyped-def]
    log = relay.client.server.app[AUDIT]
    for n in range(55):   # more than a page of 50
        log.record("proj-a", EventType.SOURCE_CONNECTED, actor="source", tunnel_id=other_tunnel, device_id="dev-2",
                   detail={"n": n})
        relay.clock.advance(1)
    log.record("proj-a", EventType.SSH_LOGIN_FAILED, actor="source", tunnel_id=tunnel_id, device_id="dev-1",
               outcome="401", detail={"username": "root"})
    relay.clock.advance(1)
    log.record("proj-a", EventType.SSH_LOGIN_SUCCEEDED, actor="source", tunnel_id=tunnel_id, device_id="dev-1",
               detail={"username": "pi"})
    relay.clock.advance(1)
    session_id = record_session(relay, tunnel_id)
    relay.clock.advance(40)
    log.record("proj-b", EventType.SSH_LOGIN_SUCCEEDED, actor="source", device_id="dev-1", detail={"username": "x"})
    assert await log.flush()
    return session_id


async def rows(page) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(event, device) of the audit table's rows, read at one moment."""
    found = await page.eval_on_selector_all(
        "#audit-rows tr", "rows => rows.map(r => [r.querySelector('.col-event').innerText.trim(),"
                          " r.querySelector('.col-device').innerText.trim()])")
    return [tuple(pair) for pair in found]


async def wait_rows(page, check, timeout: float = 20) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = await rows(page)
        if check(found):
            return found
        assert time.monotonic() < deadline, f"the audit table never matched: {found}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(180)
async def test_audit_view_filters_pages_and_plays_a_recording(relay, audit_page, tmp_path):
    page, problems = audit_page
    tunnel = await relay.create("dev-1")
    tunnel_id = tunnel["tunnel_id"]
    other = (await relay.create("dev-2"))["tunnel_id"]
    session_id = await seed(relay, tunnel_id, other)

    await page.goto(relay.url + "/console")
    await page.fill("#login-project", "proj-a")
    await page.fill("#login-token", TOKEN_A)
    await page.click("#login-submit")
    await page.wait_for_selector("#tunnels-view", state="visible")
    assert await page.is_visible("#tabs")

    # the audit view: newest first, a page of 50, then older ones
    await page.click("#tab-audit")
    await page.wait_for_selector("#audit-view", state="visible")
    assert await page.is_hidden("#tunnels-view")
    first = await wait_rows(page, lambda r: len(r) == 50)
    events = [e for e, _ in first]
    assert events[:3] == ["session_recorded", "ssh_login_succeeded", "ssh_login_failed"]
    assert await page.is_enabled("#audit-older") and await page.is_disabled("#audit-newer")
    await page.click("#audit-older")
    older = await wait_rows(page, lambda r: len(r) != 50)
    assert len(older) >= 8     # 58 events seeded (and the tunnels' own events, when the relay records them)
    assert {e for e, _ in older} <= {"source_connected", "tunnel_created"}
    await page.click("#audit-newer")
    await wait_rows(page, lambda r: len(r) == 50)

    # filters: a group of types, a device, a time window
    await page.select_option("#audit-type", label="SSH logins")
    assert await wait_rows(page, lambda r: len(r) == 2) == [("ssh_login_succeeded", "dev-1"), ("ssh_login_failed", "dev-1")]
    outcome = page.locator("#audit-rows tr").nth(1).locator(".col-outcome")
    assert (await outcome.inner_text()).strip() == "401"
    assert "username=root" in await page.locator("#audit-rows tr").nth(1).locator(".col-detail").inner_text()
    await page.select_option("#audit-type", value="")
    await page.fill("#audit-device", "dev-2")
    await page.click("#audit-submit")
    assert {d for _, d in await wait_rows(page, lambda r: r and all(d == "dev-2" for _, d in r))} == {"dev-2"}
    await page.click("#audit-clear")
    await wait_rows(page, lambda r: len(r) == 50)
    login_time = format_time(relay.clock.now() - 40 - 1)   # the successful login's second
    since = f"{login_time[:4]}-{login_time[4:6]}-{login_time[6:8]}T{login_time[9:11]}:{login_time[11:13]}:{login_time[13:15]}"
    await page.fill("#audit-since", since)
    await page.click("#audit-submit")
    assert [e for e, _ in await wait_rows(page, lambda r: len(r) == 2)] == ["session_recorded", "ssh_login_succeeded"]
    await page.click("#audit-clear")

    # History of a tunnel, from the tunnel list
    await page.click("#tab-tunnels")
    await page.wait_for_selector("#tunnels-view", state="visible")
    await page.locator(f'tr[data-tunnel-id="{tunnel_id}"]').get_by_role("button", name="History").click()
    await page.wait_for_selector("#audit-view", state="visible")
    assert await page.input_value("#audit-tunnel") == tunnel_id
    history = await wait_rows(page, lambda r: 0 < len(r) < 50 and all(d == "dev-1" for _, d in r))
    assert [e for e, _ in history][:3] == ["session_recorded", "ssh_login_succeeded", "ssh_login_failed"]

    # play the recording
    row = page.locator('#audit-rows tr[data-event="session_recorded"]')
    assert "session_id=" + session_id in await row.locator(".col-detail").inner_text()
    await row.get_by_role("button", name="Play").click()
    await page.wait_for_selector("#player-view", state="visible")
    await page.select_option("#player-speed", "32")
    await page.wait_for_selector("#player-state:text-is('finished')", timeout=30_000)
    screen = [line.rstrip() for line in (await page.inner_text("#player-screen")).split("\n")]
    assert screen[:4] == ["Linux dev-1 6.1.0", "pi@dev-1:~$ echo hello", "hello", "pi@dev-1:~$"]
    assert await page.inner_text("#player-message") == "[the source ended the session (200)]"
    assert "pi@dev-1" in await page.inner_text("#player-title")
    assert await page.get_attribute("#player-download", "download") == f"{session_id}.cast"
    assert await page.eval_on_selector("#player-progress", "p => p.value") == 1
    # a click at the start of the progress bar goes back there; Replay plays it again
    await page.eval_on_selector("#player-progress", "p => p.dispatchEvent(new MouseEvent('click', "
                                "{clientX: p.getBoundingClientRect().left}))")
    assert await page.inner_text("#player-state") == "paused"
    assert await page.eval_on_selector("#player-progress", "p => p.value") == 0
    assert "hello" not in await page.inner_text("#player-screen")
    await page.click("#player-toggle")
    await page.wait_for_selector("#player-state:text-is('finished')", timeout=30_000)
    assert "hello" in await page.inner_text("#player-screen")
    await page.screenshot(path=str(tmp_path / "audit.png"), full_page=True)

    content = await page.content()
    assert PASSWORD not in content and TOKEN_A not in content
    assert TOKEN_A not in page.url
    # leaving the view pauses; logging out forgets it
    await page.click("#player-close")
    assert await page.is_hidden("#player-view")
    await page.click("#logout")
    await page.wait_for_selector("#login-view", state="visible")
    assert await page.is_hidden("#audit-view") and await page.is_hidden("#tabs")
    assert await page.locator("#audit-rows tr").count() == 0
    assert problems == []


def test_the_console_knows_every_event_type():
    """The audit page's filter lists the trail's event types; a new type (audit_events_limited)
    must not be missing from it."""
    import re
    from pathlib import Path

    from relay.audit import EVENT_TYPES
    source = (Path(__file__).resolve().parents[2] / "relay/web/console/audit.js").read_text()
    listed = re.search(r"export const EVENT_TYPES = \[(.*?)\];", source, re.S)
    assert listed is not None
    assert set(re.findall(r'"([a-z_]+)"', listed.group(1))) == EVENT_TYPES
