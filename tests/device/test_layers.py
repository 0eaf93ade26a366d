"""Each outside library of the device side has one home (docs/architecture.md, STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import relay

PACKAGE = Path(relay.__file__).resolve().parent
HOMES = {
    "gmqtt": {"notifier.py", "agent/mqtt.py"},
    "asyncssh": {"agent/ssh.py"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_gmqtt_and_asyncssh_stay_home():
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        for library, homes in HOMES.items():
            if library in imported_roots(path):
                assert name in homes, f"{name} imports {library}; only {sorted(homes)} may"


def test_the_agent_does_not_reach_into_the_platform():
    for path in (PACKAGE / "agent").rglob("*.py"):
        roots = {n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        modules = {n.module for n in roots if n.module}
        assert not {m for m in modules if m.startswith(("relay.web", "relay.store", "relay.service", "relay.notifier"))}, path
