"""The console's screen model (relay/web/console/terminal.js, shared by the live terminal and
the player) in a real Chromium, fed what a hostile device writes (issue 15, finding 8): huge
cursor moves and counts, endless lines, sequences that never end. It neither throws nor
hangs, its memory stays bounded, and what follows is still shown."""

from __future__ import annotations

import asyncio

import pytest

EVALUATE_TIMEOUT = 60   # seconds: before the fix the tab spent 21 s and then crashed

# Runs in the page: each message written on its own (as the WebSocket delivers them), then the
# screen drawn; returns the screen's lines, what it holds, and the error if one was thrown.
FEED = """async (messages) => {
  const { Screen, MAX_COLUMNS, MAX_LINES, MAX_PENDING } = await import("/console/terminal.js");
  const pre = document.createElement("pre");
  document.body.append(pre);
  const screen = new Screen(pre);
  try {
    for (const [text, times] of messages) for (let n = 0; n < times; n += 1) screen.write(text);
    screen.render();
  } catch (error) {
    return { error: String(error) };
  }
  return { lines: screen.lines, shown: pre.textContent, pending: screen.pending.length,
           MAX_COLUMNS, MAX_LINES, MAX_PENDING };
}"""

HOSTILE = [
    ("\x1b[100000000Cx\r\n", 1),          # the probe's 48 bytes: a 100 MB line, 21 s, a crashed tab
    ("\x1b[999999999Cy\r\n", 1),          # RangeError: Invalid string length
    ("\x1b[999999999Gz\r\n", 1),
    ("abc\x1b[2D\x1b[999999999@\x1b[999999999P!\r\n", 1),   # insert and delete blanks
    ("\x1b[99999999999999999999C\t\tw\r\n", 1),
    ("q" * 100_000, 5),                   # one line without an end
    ("\r\n\x1b]0;" + "t" * 50_000, 20),   # a title that never ends, across messages
    ("\x07", 1),
    ("\x1b[" + "9" * 50_000, 4),          # a CSI that never ends
    ("m", 1),
    ("\r\n\x1bP" + "d" * 30_000, 3),      # a DCS string, ended by ESC \ cut in two
    ("\x1b", 1),
    ("\\", 1),
    ("\r\nstill here \x1b[1;31mred\x1b[0m\r\n", 1),
]


@pytest.mark.timeout(240)
async def test_hostile_output_neither_throws_nor_hangs_and_what_follows_is_shown(relay, console_page):
    page, problems = console_page
    await page.goto(relay.url + "/console")
    result = await asyncio.wait_for(page.evaluate(FEED, HOSTILE), EVALUATE_TIMEOUT)
    assert "error" not in result, result.get("error")
    lines, columns = result["lines"], result["MAX_COLUMNS"]
    assert max(len(line) for line in lines) <= columns
    assert len(lines) <= result["MAX_LINES"] and result["pending"] <= result["MAX_PENDING"]
    assert lines[0].endswith("x") and lines[1].endswith("y") and lines[2].endswith("z")
    assert lines[0].index("x") == columns - 1                   # the cursor stopped at the right edge
    assert lines[3] == "a!"                                     # "bc" pushed past the edge
    assert sum(line.count("q") for line in lines) == 500_000     # the long line, wrapped
    assert "still here red" in lines                             # what follows is shown, the rest skipped
    assert not any("t" * 10 in line or "9" * 10 in line or "d" * 10 in line for line in lines)
    assert "still here red" in result["shown"]
    assert problems.unexpected() == []


async def test_ordinary_output_is_unchanged(relay, console_page):
    page, _ = console_page
    await page.goto(relay.url + "/console")
    messages = [("pi@dev-1:~$ ls\r\n\x1b[0m\x1b[01;34mbin\x1b[0m\tnotes.txt\r\n", 1), ("abcdef\x1b[3D\x1b[K", 1),
                ("XY\x1b[2C\x1b[1D!\x1b[1G>\x1b[2@", 1), ("\x1b]0;pi@dev-1: ~\x07", 1), ("\x1b[", 1), ("1D.", 1)]
    result = await asyncio.wait_for(page.evaluate(FEED, messages), EVALUATE_TIMEOUT)
    assert result["lines"] == ["pi@dev-1:~$ ls", "bin     notes.txt", ".  bcXY !"]
