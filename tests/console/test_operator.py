"""What an operator meets in the console (issue 19), in a real headless Chromium: the tunnel
table fits a laptop's screen, the Source column follows the console's own terminal, the
states say what they mean, the audit filter's times are UTC whatever the browser's locale,
and New tunnel can turn recording on."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import pytest
from aiohttp.test_utils import unused_port

from tests.console.conftest import ACTION_TIMEOUT_MS, PageProblems
from tests.console.test_console import log_in, row
from tests.device.conftest import mosquitto  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(180)


async def new_page(browser, **context):  # type: ignore[no-untyped-def]
    ctx = await browser.new_context(**{"viewport": {"width": 1360, "height": 900}, **context})
    page = await ctx.new_page()
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    return ctx, page, PageProblems(page)


async def logged_in(page, relay) -> None:  # type: ignore[no-untyped-def]
    await log_in(page, relay)
    await page.wait_for_selector("#tunnels-view", state="visible")


# -- the table fits -----------------------------------------------------------------------------

# For every action button of every row: is it inside the card's visible box and the window,
# and is its label whole? And does the table fit its card (no sideways scrolling)?
LAYOUT = """() => {
  const card = document.querySelector('#tunnels').closest('.table-card').getBoundingClientRect();
  const table = document.querySelector('#tunnels');
  const buttons = [...document.querySelectorAll('#tunnel-rows tr')].flatMap((tr) =>
    [...tr.querySelectorAll('.actions-cell button')].map((b) => {
      const box = b.getBoundingClientRect();
      return { row: tr.dataset.tunnelId, label: b.textContent, whole: b.scrollWidth <= b.clientWidth,
               inside: box.left >= card.left && box.right <= card.right && box.right <= window.innerWidth
                       && box.width > 0 };
    }));
  return { table: table.scrollWidth, card: table.parentElement.clientWidth, buttons,
           page: document.documentElement.scrollWidth, window: window.innerWidth };
}"""


@pytest.mark.parametrize("width", [1024, 1366, 1920])
async def test_every_action_of_a_row_is_visible(relay, browser, width, tmp_path):
    open_id = (await relay.create("a-rather-long-device-id-of-a-fleet-0042",
                                  description="reach the gateway in hall 3 to fix its wifi settings"))["tunnel_id"]
    closed_id = (await relay.create("another-device-of-the-fleet-0007"))["tunnel_id"]
    assert (await relay.call("PUT", f"/v5/iot/proj-a/tunnels/{closed_id}"))[0] == 204
    ctx, page, problems = await new_page(browser, viewport={"width": width, "height": 900})
    try:
        await logged_in(page, relay)
        await row(page, open_id).wait_for()
        await row(page, closed_id).wait_for()
        layout = await page.evaluate(LAYOUT)
        await page.screenshot(path=str(tmp_path / f"tunnels-{width}.png"), full_page=True)
        print(f"{width} px: table {layout['table']} px in a card of {layout['card']} px")
        labels = {(b["row"], b["label"]) for b in layout["buttons"]}
        assert labels == {(open_id, "Terminal"), (open_id, "Rotate"), (open_id, "Close"), (open_id, "History"),
                          (closed_id, "Delete"), (closed_id, "History")}
        assert [b for b in layout["buttons"] if not (b["whole"] and b["inside"])] == []
        assert layout["table"] <= layout["card"], layout
        assert layout["page"] <= layout["window"], layout
        # and a click reaches them (nothing covers them)
        await row(page, open_id).get_by_role("button", name="History").click(trial=True)
        await row(page, closed_id).get_by_role("button", name="Delete").click(trial=True)
        assert problems.unexpected() == []
    finally:
        await ctx.close()


# -- the Source column follows the console's own terminal ------------------------------------


async def source_cell(page, tunnel_id: str) -> str:  # type: ignore[no-untyped-def]
    return (await row(page, tunnel_id).locator(".col-source").inner_text()).strip()


async def run_clock_until(page, tunnel_id: str, text: str) -> None:  # type: ignore[no-untyped-def]
    """Let the page's (paused) clock run in steps, far less in all than the 10 s auto-refresh,
    until the Source cell reads `text`; each step waits for the page's own requests."""
    for _ in range(16):   # 16 x 0.4 s = 6.4 s of the page's time, at most
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if await source_cell(page, tunnel_id) == text:
                return
            await asyncio.sleep(0.1)
        await page.clock.run_for(400)
    raise AssertionError(f"the Source column never read {text!r} (it reads {await source_cell(page, tunnel_id)!r})")


async def pause_clock_now(page) -> None:
    """Pause the page's clock a moment from now. On a busy machine more than the margin may pass
    between reading the page's time and pausing ("Cannot fast-forward to the past"): read again
    with a larger margin, a bounded number of times."""
    from playwright.async_api import Error as PlaywrightError

    for margin in (0.001, 0.05, 0.25, 1.0):
        try:
            await page.clock.pause_at(await page.evaluate("Date.now()") / 1000 + margin)
            return
        except PlaywrightError as exc:
            if "to the past" not in str(exc) or margin == 1.0:
                raise


async def test_the_source_column_follows_the_console_terminal(relay, browser):
    tunnel_id = (await relay.create("dev-follow"))["tunnel_id"]
    ctx, page, problems = await new_page(browser)
    try:
        await page.clock.install()
        await logged_in(page, relay)
        await row(page, tunnel_id).wait_for()
        # From here on the page's timers only run when the test says: the 10 s auto-refresh
        # never comes, so whatever updates the table follows the terminal's socket.
        await pause_clock_now(page)
        assert await source_cell(page, tunnel_id) == "not connected"

        await row(page, tunnel_id).get_by_role("button", name="Terminal").click()
        await page.wait_for_selector("#confirm-dialog[open]")
        await page.click("#confirm-ok")
        await page.wait_for_selector("#term-state:text-is('waiting for device')")
        await run_clock_until(page, tunnel_id, "connected")

        await page.click("#term-close")
        await run_clock_until(page, tunnel_id, "not connected")
        assert problems.unexpected() == []
    finally:
        await ctx.close()


# -- states that say what they mean ------------------------------------------------------------


async def cells(page, tunnel_id: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    found = {}
    for name in ("col-status", "col-source", "col-device-state", "col-notify"):
        found[name] = (await row(page, tunnel_id).locator(f".{name}").inner_text()).strip()
    return found


async def test_notify_and_the_ends_say_what_the_operator_needs(relay_factory, mosquitto, browser):  # noqa: F811
    """The broker took the notify, but no agent connected: the table says just that."""
    relay = await relay_factory(mqtt_url=mosquitto.url)
    handed = (await relay.create("dev-no-agent"))["tunnel_id"]
    closed = (await relay.create("dev-closed"))["tunnel_id"]
    assert (await relay.call("PUT", f"/v5/iot/proj-a/tunnels/{closed}"))[0] == 204
    for _ in range(100):   # the outbox hands the notify to the broker in the background
        if (await relay.call("GET", f"/v5/iot/proj-a/tunnels/{handed}"))[1]["notify_status"] == "DELIVERED":
            break
        await asyncio.sleep(0.1)
    ctx, page, problems = await new_page(browser)
    try:
        await logged_in(page, relay)
        await row(page, handed).wait_for()
        assert await cells(page, handed) == {"col-status": "OPEN", "col-source": "not connected",
                                             "col-device-state": "not connected", "col-notify": "sent to broker"}
        title = await row(page, handed).locator(".col-notify .badge").get_attribute("title")
        assert "does not say the device got it" in title
        # a closed tunnel: its status once, and no connection states that no longer mean anything
        assert await cells(page, closed) == {"col-status": "CLOSED", "col-source": "—", "col-device-state": "—",
                                             "col-notify": "—"}
        assert problems.unexpected() == []
    finally:
        await ctx.close()


async def test_a_notify_the_broker_has_not_taken_waits_for_it(relay_factory, browser):
    relay = await relay_factory(mqtt_url=f"mqtt://127.0.0.1:{unused_port()}")   # no broker there
    waiting = (await relay.create("dev-waiting"))["tunnel_id"]
    ctx, page, problems = await new_page(browser)
    try:
        await logged_in(page, relay)
        await row(page, waiting).wait_for()
        assert (await cells(page, waiting))["col-notify"] == "waiting for broker"
    finally:
        await ctx.close()


# -- the audit filter's times are UTC ------------------------------------------------------------


async def test_audit_times_are_taken_and_shown_in_utc_whatever_the_locale(relay, browser):
    ctx, page, problems = await new_page(browser, locale="en-US", timezone_id="America/Los_Angeles")
    queries: list[dict[str, list[str]]] = []
    page.on("request", lambda r: queries.append(urllib.parse.parse_qs(urllib.parse.urlsplit(r.url).query))
            if "/audit?" in r.url else None)
    try:
        await logged_in(page, relay)
        await page.click("#tab-audit")
        await page.wait_for_selector("#audit-view", state="visible")
        assert "UTC" in await page.inner_text("label:has(#audit-since)")
        await page.fill("#audit-since", "2026-11-24 16:18")
        await page.fill("#audit-until", "2026-11-24T23:05:09Z")
        await page.click("#audit-submit")
        for _ in range(100):
            if any("since" in q for q in queries):
                break
            await asyncio.sleep(0.1)
        sent = [q for q in queries if "since" in q][-1]
        assert sent["since"] == ["2026-11-24T16:18:00Z"] and sent["until"] == ["2026-11-24T23:05:09Z"]
        # shown as applied: UTC, 24-hour
        assert await page.input_value("#audit-since") == "2026-11-24 16:18:00"
        assert await page.input_value("#audit-until") == "2026-11-24 23:05:09"
        # something else is refused, with the form it takes
        asked = len(queries)
        await page.fill("#audit-since", "11/24/2026 4:18 PM")
        await page.click("#audit-submit")
        await page.wait_for_selector("#toast:has-text('not a UTC time like 2026-11-24 16:18:07')")
        assert len(queries) == asked
        assert problems.unexpected() == []
    finally:
        await ctx.close()


# -- New tunnel can record --------------------------------------------------------------------


async def test_new_tunnel_form_turns_recording_on(relay, browser):
    ctx, page, problems = await new_page(browser)
    try:
        await logged_in(page, relay)
        for device, record in (("dev-recorded", True), ("dev-plain", False)):
            await page.click("#new-tunnel")
            await page.fill("#create-device", device)
            if record:
                await page.check("#create-record")
            await page.click("#create-submit")
            await page.wait_for_selector("#secrets", state="visible")
            listed = (await relay.call("GET", f"/v5/iot/proj-a/tunnels?device_id={device}"))[1]["tunnels"]
            assert [t["record_session"] for t in listed] == [record]
            await page.click("#secrets-dismiss")
        assert problems.unexpected() == []
    finally:
        await ctx.close()
