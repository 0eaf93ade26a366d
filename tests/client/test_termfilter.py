"""The filter of the remote terminal's stream: what draws passes, what reaches past the
screen (clipboard, palette, window, queries answered into stdin) does not, however the
stream is cut into messages."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.client.termfilter import MAX_SEQUENCE, TerminalFilter, filtered

ESC = "\x1b"


def chunked(text: str, cuts: list[int]) -> str:
    screen = TerminalFilter()
    out, at = [], 0
    for cut in sorted(set(c % (len(text) + 1) for c in cuts)):
        out.append(screen.feed(text[at:cut]))
        at = cut
    out.append(screen.feed(text[at:]))
    return "".join(out)


# What a shell, ls, vim, top and less write: all of it passes unchanged.
DRAWING = [
    "pi@dev-1:~$ ls --color\r\n\x1b[0m\x1b[01;34mbin\x1b[0m  \x1b[38;5;208mnotes.txt\x1b[0m\r\n",
    "\x1b[?1049h\x1b[22;0;0t\x1b[1;24r\x1b(B\x1b[m\x1b[4l\x1b[?7h\x1b[H\x1b[2J\x1b[?25l",   # vim starting
    "\x1b[3A\x1b[2K\x1b[10;5H\x1b[K\x1b[1;31;48;2;10;20;30mred\x1b[0m\x1b7\x1b8\x1b=\x1b>",
    "\x1b[?2004h\x1b[?1000h\x1b[?1006h\x1b[6n\x1b[c\x1b[>c\x1b[?1$p\x1b[2 q\x1b[23;0;0t\x1b[?1049l",
    "\x1b]0;pi@dev-1: ~\x07\x1b]2;vim notes.txt\x1b\\",                  # titles
    "\x1b]8;;https://example.com/docs\x1b\\docs\x1b]8;;\x1b\\",          # a hyperlink
    "ünïcödé ✓ 漢字 🙂 \t\b\r\n\x07\x0e\x0f",
]


@pytest.mark.parametrize("text", DRAWING)
def test_what_draws_passes_unchanged(text):
    assert filtered(text) == text
    assert chunked(text, list(range(0, len(text), 3))) == text


HOSTILE = [
    ("\x1b]52;c;ZWNobyBwd25lZA==\x07", "clipboard write"),
    ("\x1b]52;c;?\x1b\\", "clipboard read"),
    ("\x9d52;c;ZWNobyBwd25lZA==\x9c", "clipboard write, 8-bit"),
    ("\x1b]4;1;rgb:ff/00/00\x07\x1b]10;?\x07\x1b]11;#000000\x1b\\\x1b]104\x07", "palette set and query"),
    ("\x1b]50;?\x07\x1b]50;fixed\x07", "font"),
    ("\x1b]7;file://evil/etc\x07\x1b]9;notify\x07\x1b]777;notify;a;b\x07\x1b]1337;File=x:YQ==\x07", "desktop"),
    ("\x1b]8;;file:///etc/passwd\x07", "a link to a local file"),
    ("\x1bP$qm\x1b\\\x1bP+q544e\x1b\\\x1bP0|17/1b5b41\x1b\\\x1bPq#0;2;0;0;0#0!10~\x1b\\", "DCS queries, keys, sixel"),
    ("\x90$qm\x9c\x1b_Gf=100;AAAA\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\", "APC, PM, SOS"),
    ("\x1b[21t\x1b[20t\x1b[8;100;300t\x1b[3;0;0t\x1b[2t\x1b[13t\x1b[t\x1b[1t", "window operations"),
    ("\x1b[5i\x1b[4i\x1b[?5i\x1b[0i", "printer"),
    ("\x1b[2h\x1b[12l\x1b[4;2h", "keyboard lock, local echo"),
    ("\x05", "answerback"),
]


@pytest.mark.parametrize("text,what", HOSTILE)
def test_what_reaches_past_the_screen_is_removed(text, what):
    assert filtered(f"a{text}b") == "ab", what
    assert chunked(f"a{text}b", list(range(len(text) + 2))) == "ab", what


def test_8bit_controls_are_written_in_7bit_form_or_dropped():
    assert filtered("\x9b1;31mred\x9b0m") == "\x1b[1;31mred\x1b[0m"
    assert filtered("a\x85b\x8dc\x9cd") == "abcd"                      # lone C1 controls
    assert filtered("\x9d0;title\x9c") == "\x1b]0;title\x1b\\"


def test_a_string_ends_where_the_terminal_ends_it():
    assert filtered("\x1b]52;c;YQ==\x1b[31mred") == "\x1b[31mred"     # ESC + not \: the OSC is over
    assert filtered("\x1b]52;c;YQ==\x18red") == "red"                  # CAN aborts
    assert filtered("\x1b]0;ti\x01tle\x07") == "\x1b]0;title\x07"       # C0 inside is ignored
    assert filtered("\x1b]0;a\x9b31m") == "\x1b[31m"                   # a C1 introducer ends it
    assert filtered("\x1b[1\n2A") == "\n\x1b[12A"                      # C0 inside CSI runs at once
    assert filtered("\x1b[12\x18A") == "A"                             # CAN aborts a CSI
    assert filtered("\x1b\x1b[A") == "\x1b[A"


def test_a_long_sequence_is_dropped_whole_and_not_held():
    screen = TerminalFilter()
    out = screen.feed("\x1b]0;" + "t" * (MAX_SEQUENCE * 3))
    assert out == "" and screen.held == 0
    assert screen.feed("\x07after") == "after"
    out = screen.feed("\x1b[" + "1;" * MAX_SEQUENCE)
    assert out == "" and screen.held == 0
    assert screen.feed("mtext") == "text"
    out = screen.feed("\x1bP" + "q" * (MAX_SEQUENCE * 3))
    assert out == "" and screen.held <= 2
    assert screen.feed("\x1b\\done") == "done"


def test_an_incomplete_sequence_waits_for_the_next_message():
    screen = TerminalFilter()
    assert screen.feed("red: \x1b[3") == "red: "
    assert screen.feed("1mX\x1b]5") == "\x1b[31mX"
    assert screen.feed("2;c;YQ==") == ""
    assert screen.feed("\x07done\x1b") == "done"
    assert screen.close() == ""


# -- whatever the chunking --------------------------------------------------------------------

PIECES = ["\x1b", "]", "52", "5", "2", ";", "c;YQ==", "0", "8", "\x07", "\\", "\x9d", "\x9c", "\x9b", "\x90",
          "[", "P", "_", "^", "X", "t", "21", "31m", "m", "?", "\x18", "\x1a", "\n", "a", "é", "🙂", "\x85",
          "http://x", "\x7f", "\x05", " ",
          # whole hostile sequences, which the cuts split anywhere
          "\x1b]52;c;YQ==\x07", "\x9d52;c;YQ==\x9c", "\x1b]52;c;YQ==\x1b\\", "\x1b]52;;?\x07", "\x1b[21t",
          "\x1b[8;1;1t", "\x1bP$qm\x1b\\", "\x1b_Ga=T\x1b\\", "\x1b]0;t\x07", "\x1b]8;;http://x\x07",
          "\x1b[?1049h", "\x1b[2h", "\x1b[4l", "\x1b[5i", "\x1b[1;31m", "\x1b[" + "1" * 70 + "m"]

OSC_NUMBER = re.compile("\x1b\\](\\d*)(;?)")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60), st.lists(st.integers(0, 400), max_size=8))
def test_never_an_osc_52_and_the_same_whatever_the_chunking(pieces, cuts):
    text = "".join(pieces)
    whole = filtered(text)
    assert chunked(text, cuts) == whole
    one_by_one = TerminalFilter()   # never the fast path for sequences: the state machine alone
    assert "".join(one_by_one.feed(c) for c in text) == whole
    assert not re.search("[\x80-\x9f\x05]", whole)                      # no C1 control, no ENQ
    for number, semicolon in OSC_NUMBER.findall(whole):
        assert number in ("0", "1", "2", "8") and semicolon, repr(whole)
    for intro in ("\x1bP", "\x1bX", "\x1b^", "\x1b_"):
        assert intro not in whole
    assert not re.search("\x1b\\[[0-9;]*t", whole.replace("\x1b[22t", "").replace("\x1b[23t", ""))
    assert not whole.endswith("\x1b")                                   # only whole sequences


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"))), st.lists(st.integers(0, 200), max_size=6))
def test_text_without_controls_passes_unchanged(text, cuts):
    assert chunked(text, cuts) == text
