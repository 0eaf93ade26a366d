"""relay.client sits beside relay.web and relay.agent: it uses aiohttp's client only, and
neither the server, the agent, nor their libraries (docs/architecture.md)."""

from __future__ import annotations

import pytest

from tests.test_layers import imports, modules

FORBIDDEN = ("aiohttp.web", "relay.web", "relay.agent", "relay.service", "relay.store", "gmqtt", "asyncssh", "uvloop")


@pytest.mark.parametrize("module, path", [m for m in modules() if m[0].startswith("relay.client")],
                         ids=[m[0] for m in modules() if m[0].startswith("relay.client")])
def test_client_imports(module, path):
    for name in imports(path):
        assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), f"{module} imports {name}"
