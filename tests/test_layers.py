"""The layering of docs/architecture.md, held by reading every module's imports: imports point
down (or stay in their layer), every module is in a layer, and no modules import each other in
a circle (type-only imports count: a circle of annotations is still a circle of knowledge)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "relay"

# Layers from the bottom up, as docs/architecture.md draws them; a module may import its own
# layer and the ones below.
LAYERS = [
    {"relay.errors", "relay.config", "relay.clock", "relay.tokens", "relay.model", "relay.logs", "relay.printable",
     "relay.closes", "relay.upgrade_tail"},
    {"relay.envelope", "relay.aws_messages", "relay.audit"},
    {"relay.codec"},
    {"relay.protocol", "relay.protocol_aws", "relay.cluster"},
    {"relay.recording", "relay.store"},
    {"relay.ends"},
    {"relay.sessions", "relay.auditlog"},
    {"relay.service", "relay.notifier", "relay.presence", "relay.notify", "relay.broker"},
    {"relay.web", "relay.agent", "relay.client"},
    {"relay.cli"},
]
# In no layer: the package itself and the compiled codec, which sits with its facade.
UNLAYERED = {"relay", "relay._codec_rs"}

# Each outside library has one home.
HOMES = {
    "aiohttp.web": ("relay.web",),
    # the server (relay.web), the REST client (relay.client.api), and the one WebSocket client of
    # both ends (relay.ends.websocket, an adapter: nothing else in relay.ends, nor the agent)
    "aiohttp": ("relay.web", "relay.client", "relay.ends.websocket"),
    "gmqtt": ("relay.notifier", "relay.agent"),
    "uvloop": ("relay.cli",),
    "asyncssh": ("relay.agent",),
    "prometheus_client": ("relay.web.metrics",),
    "pydantic": ("relay.web.models",),
    "pydantic_core": ("relay.web.models",),
}


def modules(package: Path = PACKAGE) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
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


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports. `from relay.web import rest` is an arrow to
    relay.web.rest; `from relay.cluster import Lease` one to relay.cluster."""
    found = modules(package)
    known = {module for module, _ in found}
    graph: dict[str, set[str]] = {}
    for module, path in found:
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                while name and name not in known:   # the longest prefix that is a module
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def crossings(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module)
        for target in sorted(targets):
            other = layer_of(target)
            if own is not None and other is not None and other > own:
                found.append(f"{module} (layer {own}) imports {target} (layer {other})")
    return found


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


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_every_module_has_a_layer_and_every_layer_name_a_module():
    known = {module for module, _ in modules()}
    assert [m for m in sorted(known - UNLAYERED) if layer_of(m) is None] == []
    assert sorted(name for layer in LAYERS for name in layer if name not in known) == []


def test_the_checks_see_a_planted_crossing_and_a_planted_circle(tmp_path):
    """The checks above fail when a line is crossed or a circle closed (in a copy of two modules)."""
    package = tmp_path / "relay"
    (package / "codec" / "_py").mkdir(parents=True)
    (package / "codec" / "__init__.py").write_text("from relay.codec import _py\n")
    (package / "codec" / "_py" / "__init__.py").write_text("from relay.codec._py.decoder import Decoder\n")
    (package / "codec" / "_py" / "decoder.py").write_text("from relay.codec._py.aws import AwsDecoder\n")
    (package / "codec" / "_py" / "aws.py").write_text("from relay.codec._py.decoder import Decoder\n")
    (package / "errors.py").write_text("from relay.web.app import make_app\n")
    (package / "web").mkdir()
    (package / "web" / "__init__.py").write_text("")
    (package / "web" / "app.py").write_text("from relay import errors\n")
    graph = import_graph(package)
    assert circles(graph) == [["relay.codec._py.aws", "relay.codec._py.decoder"], ["relay.errors", "relay.web.app"]]
    assert crossings(graph) == [f"relay.errors (layer 0) imports relay.web.app (layer {layer_of('relay.web')})"]


def test_no_crossings_in_the_import_graph():
    assert crossings(import_graph()) == []


@pytest.mark.parametrize("library, homes", HOMES.items())
def test_outside_libraries_have_one_home(library, homes):
    for module, path in modules():
        uses = any(name == library or name.startswith(library + ".") for name in imports(path))
        if uses:
            assert any(module == h or module.startswith(h + ".") for h in homes), f"{module} imports {library}"


# Inside relay.ends (the ends' shared layer), from the bottom up: the sans-I/O rules (the
# standard library and the message shapes only), the asyncio pipes, local streams and listeners, the
# WebSocket client adapter (the only aiohttp user here), the reconnect loop and the sessions
# built on them.
ENDS = [
    {"relay.ends.huawei_tcp", "relay.ends.aws_streams", "relay.ends.localproxy_args"},
    {"relay.ends.pipes", "relay.ends.listeners", "relay.ends.local_streams", "relay.ends.websocket"},
    {"relay.ends.reconnect", "relay.ends.aws_session"},
]
ENDS_RULES_MAY_IMPORT = {"relay.envelope", "relay.aws_messages"}


def test_ends_modules_are_placed_and_point_down():
    found = {module for module, _ in modules() if module.startswith("relay.ends.")}
    placed = set().union(*ENDS)
    assert sorted(found ^ placed) == []
    graph = import_graph()
    for index, layer in enumerate(ENDS):
        for module in layer:
            above = {m for higher in ENDS[index + 1:] for m in higher}
            assert not graph[module] & above, f"{module} imports {sorted(graph[module] & above)}"


@pytest.mark.parametrize("module", sorted(ENDS[0]))
def test_the_ends_rules_are_sans_io(module):
    """The stream rules import the standard library and the message shapes, nothing else: no
    asyncio, no socket, no aiohttp (tested without sockets in tests/ends/)."""
    path = dict(modules())[module]
    for name in imports(path):
        root = name.split(".")[0]
        if name == "relay":
            continue   # `from relay import envelope`: the module is checked by its own name
        if root == "relay":
            assert any(name == allowed or name.startswith(allowed + ".") for allowed in ENDS_RULES_MAY_IMPORT), \
                f"{module} imports {name}"
        else:
            assert root in sys.stdlib_module_names and root not in ("asyncio", "socket", "ssl"), f"{module} imports {name}"


def test_closes_is_standard_library_only():
    for name in imports(dict(modules())["relay.closes"]):
        assert name.split(".")[0] in sys.stdlib_module_names, name
