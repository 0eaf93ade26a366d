"""What a device's terminal output may do to the operator's own terminal (`relay ssh`,
`relay exec`, `relay playback`): sans-I/O, text in, text out, one `TerminalFilter` per stream.

The remote shell's output is written to the operator's terminal, which obeys escape
sequences. Most of them only draw (colours, cursor movement, modes, the alternate screen)
and pass untouched. The ones that reach past the screen are removed, as careful terminals
do by default (docs/security.md, "Terminal injection"):

- OSC strings except 0/1/2 (window and icon title) and 8 (hyperlinks to http(s) URLs only):
  52 writes the clipboard, 4/10-19/104/110-119 set or query the palette, 50 the font,
  7/9/777/1337 talk to the desktop or transfer files; every query answers into stdin;
- DCS, SOS, PM and APC strings entirely (DECRQSS and XTGETTCAP answer into stdin, DECUDK
  redefines keys, sixel and kitty graphics, tmux passthrough);
- CSI t (window operations: move, resize, iconify, report the title into stdin) except
  22/23 (push/pop the title); CSI i (media copy: printer); modes 2 (KAM, locks the keyboard)
  and 12 (SRM, local echo); ENQ (the answerback message);
- C1 controls sent as code points (U+0080-U+009F): their sequences are filtered as the
  7-bit ones and written in 7-bit form; lone ones are dropped.

The title passes because OpenSSH passes it and shells set it (`user@host: dir`); what made
titles dangerous is reading them back (CSI 21 t), which is removed. Fixed-format answers
(cursor position CSI 6 n, device attributes CSI c, DECRQM) pass: remote programs need them
and their answers carry nothing the device chose.

The parser follows the DEC/xterm state machine (vt100.net/emu/dec_ansi_parser), so a
sequence is judged as the terminal would read it. A sequence may be split across messages:
its start is held (at most MAX_SEQUENCE characters; a longer one is dropped whole, and what
remains of it is skipped as it comes without being held). Only whole sequences are written,
so the terminal is back in its ground state after every piece of output. It works on text:
the protocols carry terminal output as JSON strings (and recordings as asciicast's), so the
UTF-8 is decoded before it gets here and a character is never split."""

from __future__ import annotations

import re

MAX_SEQUENCE = 4096   # characters of one escape sequence held while it is incomplete

ESC, BEL, CAN, SUB, DEL, ENQ = "\x1b", "\x07", "\x18", "\x1a", "\x7f", "\x05"
ST8 = "\x9c"
# 8-bit introducers and the 7-bit ESC sequence each one stands for.
_C1_INTRODUCERS = {"\x90": "P", "\x98": "X", "\x9b": "[", "\x9d": "]", "\x9e": "^", "\x9f": "_"}
_STRINGS = {"]": "osc", "P": "dcs", "X": "sos", "^": "pm", "_": "apc"}
# Text and whole CSIs that only draw (finals but h, i, l and t; private modes ?...h/l), at
# once: the common case. Anything else, and a CSI cut by the end of a message, goes through
# the state machine one character at a time, which decides the same.
_DRAWING_RUN = re.compile("(?:[^\x05\x1b\x80-\x9f]+|\x1b\\[[0-?]{0,64}[ -/]{0,4}[@-gjkm-su-~]"
                          "|\x1b\\[\\?[0-?]{0,64}[hl])+")

ALLOWED_OSC = {"0", "1", "2", "8"}
LINK_SCHEMES = ("http://", "https://")
_TITLE_STACK = {"22", "23"}      # CSI 22 t / 23 t: push and pop the title
_DROPPED_MODES = {"2", "12"}     # KAM (keyboard lock), SRM (local echo)

_GROUND, _ESCAPE, _ESC_INTER, _CSI, _STRING, _SKIP_ESC, _SKIP_CSI = range(7)


def _csi_allowed(body: str, final: str) -> bool:
    """body: the parameter and intermediate characters between ESC [ and the final one."""
    if final not in "tihl":
        return True   # colours, cursor, erase, scroll, queries with fixed answers: all draw
    private = body[:1] in ("<", "=", ">", "?")
    intermediates = any(" " <= c <= "/" for c in body)
    if intermediates:
        return True   # DECSCUSR, DECRQM, DECSTR...: none reaches past the screen
    params = body.split(";")
    if final == "t" and not private:
        return params[0] in _TITLE_STACK
    if final == "i":
        return False
    if final in "hl" and not private:
        return not _DROPPED_MODES.intersection(params)
    return True


def _osc_allowed(body: str) -> bool:
    number, numbered, rest = body.partition(";")
    if not numbered:
        return False   # OSC 104 (reset the palette) and the like: nothing of ours
    if number in ("0", "1", "2"):
        return True
    if number == "8":   # OSC 8 ; params ; URI: a link opened only by a click, and only to the web
        _, has_uri, uri = rest.partition(";")
        return bool(has_uri) and (uri == "" or uri.lower().startswith(LINK_SCHEMES))
    return False


class TerminalFilter:
    """feed(text) -> the part of it that may go to the terminal, in order."""

    def __init__(self) -> None:
        self._state = _GROUND
        self._held = ""            # the incomplete sequence (7-bit form), empty in ground
        self._kind = ""            # the string kind in _STRING
        self._keep = False         # _STRING: the string is held (an OSC that may pass)
        self._string_esc = False   # _STRING: an ESC was the last character
        self._numbered = False     # _STRING: the OSC number (up to the first ";") is known

    @property
    def held(self) -> int:
        """How many characters are held for the next feed (at most MAX_SEQUENCE + 2)."""
        return len(self._held)

    def feed(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if self._state == _GROUND:
                run = _DRAWING_RUN.match(text, i)
                if run:
                    out.append(run.group())
                    i = run.end()
                    if i == n:
                        break
            self._char(text[i], out)
            i += 1
        return "".join(out)

    def close(self) -> str:
        """The stream ended: an incomplete sequence is dropped."""
        self._reset()
        return ""

    # -- one character at a time outside the ground state ------------------------------------

    def _reset(self) -> None:
        self._state, self._held, self._kind, self._keep, self._string_esc = _GROUND, "", "", False, False

    def _escape(self, intro: str = "") -> None:
        """An ESC (or an 8-bit introducer, given as its 7-bit letter) starts a sequence."""
        self._reset()
        self._state, self._held = _ESCAPE, ESC
        if intro:
            self._after_escape(intro)

    def _after_escape(self, c: str) -> None:
        """ESC [ or ESC ] P X ^ _: a CSI or a string begins."""
        if c == "[":
            self._state, self._held = _CSI, ESC + "["
        else:
            self._state, self._kind, self._held = _STRING, _STRINGS[c], ESC + c
            self._keep = c == "]"
            self._numbered = False

    def _char(self, c: str, out: list[str]) -> None:
        state = self._state
        if state == _STRING:
            self._string_char(c, out)
            return
        if "\x80" <= c <= "\x9f":   # a C1 control ends any sequence, as ESC does
            self._reset()
            if c in _C1_INTRODUCERS:
                self._escape(_C1_INTRODUCERS[c])
            return                    # lone C1 controls (and ST outside a string): dropped
        if c == ESC:
            self._escape()
            return
        if state == _GROUND:
            return                    # ENQ: dropped
        if c in (CAN, SUB):           # abort the sequence
            self._reset()
            return
        if c < " ":                   # C0 inside a sequence: the terminal runs it at once
            if c != ENQ:
                out.append(c)
            return
        if c == DEL:
            return                    # ignored inside sequences
        if c > DEL:                   # not part of any sequence: abort it, the text is text
            self._reset()
            out.append(c)
            return
        if state == _ESCAPE:
            if c == "[" or c in _STRINGS:
                self._after_escape(c)
            elif c <= "/":
                self._held += c
                self._state = _ESC_INTER
            else:
                out.append(self._held + c)   # ESC 7, ESC =, ESC c ...: all only draw
                self._reset()
        elif state == _ESC_INTER:
            if c <= "/":
                self._held += c
                if len(self._held) > MAX_SEQUENCE:
                    self._state, self._held = _SKIP_ESC, ""
            else:
                out.append(self._held + c)   # ESC ( B, ESC # 8, ESC SP F ...
                self._reset()
        elif state == _CSI:
            if c >= "@":
                body = self._held[2:]
                if _csi_allowed(body, c):
                    out.append(self._held + c)
                self._reset()
            else:
                self._held += c
                if len(self._held) > MAX_SEQUENCE:
                    self._state, self._held = _SKIP_CSI, ""
        elif state == _SKIP_ESC:
            if c >= "0":
                self._reset()
        elif state == _SKIP_CSI:
            if c >= "@":
                self._reset()

    def _string_char(self, c: str, out: list[str]) -> None:
        if self._string_esc:
            self._string_esc = False
            if c == "\\":
                self._end_string(ESC + "\\", out)
                return
            self._reset()               # ESC and another character: the string ends unterminated
            self._escape()
            self._char(c, out)
            return
        if c == ESC:
            self._string_esc = True
        elif c == BEL and self._kind == "osc":
            self._end_string(BEL, out)
        elif c == ST8:
            self._end_string(ESC + "\\", out)
        elif c in (CAN, SUB):
            self._reset()
        elif "\x80" <= c <= "\x9f":
            self._reset()
            self._char(c, out)
        elif c < " " or c == DEL:
            pass                        # ignored inside strings (the terminal does the same)
        elif self._keep:
            if c == ";" and not self._numbered:
                self._numbered = True
                if self._held[2:] not in ALLOWED_OSC:   # decided by its number: not held any longer
                    self._keep, self._held = False, ""
                    return
            self._held += c
            if len(self._held) > MAX_SEQUENCE:
                self._keep, self._held = False, ""

    def _end_string(self, terminator: str, out: list[str]) -> None:
        if self._keep and _osc_allowed(self._held[2:]):
            out.append(self._held + terminator)
        self._reset()


def filtered(text: str) -> str:
    """A whole text at once (a test's or a one-shot caller's)."""
    return TerminalFilter().feed(text)
