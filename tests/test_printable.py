"""Text that devices and tenants chose, shown on a terminal: control characters escaped, in
what the CLI prints (tests/client/test_output.py) and in the relay's and agent's logs."""

from __future__ import annotations

import logging
import re

import orjson

from relay.logs import JsonFormatter, TextFormatter
from relay.printable import json_safe, safe

# A title, a clipboard write, concealed text, cursor up and erase line, an 8-bit CSI, a bidi
# override, a carriage return that rewrites the line, and the bell.
HOSTILE = ("ok\x1b]0;pwned\x07\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[8mhidden\x1b[0m\x1b[2A\x1b[2K"
           "\x9b2K\u202egnp.exe\rFAKE\x07")
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")


def test_safe_shows_every_control_character_escaped():
    shown = safe(HOSTILE)
    assert not CONTROLS.search(shown)
    assert shown.startswith("ok\\x1b]0;pwned\\x07\\x1b]52;c;") and "\\x9b2K\\u202egnp.exe\\x0dFAKE\\x07" in shown
    assert safe("two\tlines\n") == "two\tlines\n"            # tabs and line ends are ours to keep
    assert safe(shown) == shown and safe("naïve ✓ 漢字") == "naïve ✓ 漢字"


def test_json_safe_keeps_the_value():
    text = json_safe(orjson.dumps({"k\x9b": [HOSTILE, "\u2066x\u2069\x7f"]}).decode())
    assert not CONTROLS.search(text)
    assert orjson.loads(text) == {"k\x9b": [HOSTILE, "\u2066x\u2069\x7f"]}


def test_logs_escape_what_a_device_chose():
    """A device id comes from an MQTT topic that any client of the broker may publish to."""
    record = logging.makeLogRecord({"name": "relay.notifier", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "device %s", "args": (HOSTILE,), "device_id": HOSTILE})
    text = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert not CONTROLS.search(text), text
    assert text.startswith("INFO relay.notifier: device ok\\x1b]0;pwned") and "device_id=ok\\x1b]0;pwned" in text
    line = JsonFormatter().format(record)
    assert not CONTROLS.search(line)
    assert orjson.loads(line)["device_id"] == HOSTILE and orjson.loads(line)["message"] == f"device {HOSTILE}"
