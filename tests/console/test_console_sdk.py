"""The console's terminal with a device that acts as Huawei's C device SDK does
(tests/sdk_device.py): its login answer without a status, its refusal as a later
`disconnect` 400, its control-dense output in ~12.4 KB messages that the relay splits."""

from __future__ import annotations

import pytest

from tests.console.test_console import TERMINAL_TIMEOUT_MS, log_in, wait_for_line
from tests.device.conftest import SSH_PASSWORD, SSH_USER
from tests.sdk_device import SdkDevice

DEVICE = "sdk-console-dev"


@pytest.mark.timeout(240)
async def test_terminal_on_an_sdk_device(relay_factory, mosquitto, sshd, console_page):
    page, problems = console_page
    relay = await relay_factory(mqtt_url=mosquitto.url)
    device = SdkDevice(sshd.port)
    await device.follow_notifies(mosquitto.port, DEVICE)
    try:
        await log_in(page, relay)
        await page.wait_for_selector("#tunnels-view", state="visible")
        await page.click("#new-tunnel")
        await page.fill("#create-device", DEVICE)
        await page.click("#create-submit")
        await page.wait_for_selector("#secrets", state="visible")
        await page.click("#secrets-terminal")
        await page.wait_for_selector("#term-state:text-is('device connected')", timeout=TERMINAL_TIMEOUT_MS)

        # a wrong password: the SDK answers at once without a status, then refuses with a disconnect
        await page.fill("#ssh-user", SSH_USER)
        await page.fill("#ssh-password", "wrong")
        await page.click("#ssh-connect")
        refusal = "Login failed (400): WssClientListenerOnMsg: Create SSH channel failed"
        await page.wait_for_selector(f"#term-message:text-is({refusal!r})", timeout=TERMINAL_TIMEOUT_MS)
        await page.wait_for_selector("#ssh-form", state="visible")
        assert await page.inner_text("#term-state") == "device connected"

        # the right one: logged in, the shell answers
        await page.fill("#ssh-password", SSH_PASSWORD)
        await page.click("#ssh-connect")
        await page.wait_for_selector("#term-state:text-is('logged in')", timeout=TERMINAL_TIMEOUT_MS)
        await page.wait_for_selector("#screen:has-text('$')", timeout=TERMINAL_TIMEOUT_MS)
        await page.click("#screen")
        await page.keyboard.type("echo sdk-$((40+2))")
        await page.keyboard.press("Enter")
        await wait_for_line(page, "sdk-42")

        # control-dense output: the SDK's big messages are split by the relay; the session lives on
        await page.keyboard.type("head -c 5000 /dev/zero | tr '\\0' '\\1'; echo; echo dense-done")
        await page.keyboard.press("Enter")
        await wait_for_line(page, "dense-done")
        assert max(len(m.encode("utf-8", "surrogateescape")) for m in device.sent) > 10240
        await page.keyboard.type("echo still-$((1+1))")
        await page.keyboard.press("Enter")
        await wait_for_line(page, "still-2")
        assert await page.inner_text("#term-state") == "logged in"
        assert device.close_codes == []
        assert problems.unexpected() == []
    finally:
        await device.stop()
