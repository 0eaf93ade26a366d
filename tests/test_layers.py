"""The layering of docs/architecture.md, held by reading every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "relay"

# Layers from the bottom up; a module may import its own layer and the ones below.
LAYERS = [
    {"relay.errors", "relay.config", "relay.clock", "relay.tokens", "relay.model", "relay.logs", "relay.envelope",
     "relay.aws_messages", "relay.audit", "relay.printable"},
    {"relay.codec"},
    {"relay.protocol", "relay.protocol_aws", "relay.store", "relay.cluster", "relay.recording"},
    {"relay.service", "relay.forward", "relay.aws_streams", "relay.notifier", "relay.presence", "relay.broker",
     "relay.outbox",
     "relay.auditlog", "relay.sessions"},
    {"relay.web", "relay.agent", "relay.client"},
    {"relay.cli"},
]

# Each outside library has one home.
HOMES = {
    "aiohttp.web": ("relay.web",),
    "gmqtt": ("relay.notifier", "relay.agent"),
    "uvloop": ("relay.cli",),
    "asyncssh": ("relay.agent",),
}


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_of(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    return None


@pytest.mark.parametrize("module, path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(module, path):
    own = layer_of(module)
    if own is None:
        return  # private helpers (e.g. relay._codec_rs) sit with their package
    for name in imports(path):
        if not name.startswith("relay"):
            continue
        target = layer_of(name)
        assert target is None or target <= own, f"{module} (layer {own}) imports {name} (layer {target})"


@pytest.mark.parametrize("library, homes", HOMES.items())
def test_outside_libraries_have_one_home(library, homes):
    for module, path in modules():
        uses = any(name == library or name.startswith(library + ".") for name in imports(path))
        if uses:
            assert any(module == h or module.startswith(h + ".") for h in homes), f"{module} imports {library}"
