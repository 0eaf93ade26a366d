"""The Python twin mirrors the Rust crate file for file (docs/codec.md, "Which Python file twins
which Rust file"): every codec-rs/src/NAME.rs but lib.rs has relay/codec/_py/NAME.py, whose
docstring names it, and the twin modules import each other as the crate's files do. lib.rs, the
bindings, is twinned by the package's __init__.py (the names) and bindings.py (the argument checks)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRATE = ROOT / "codec-rs" / "src"
TWIN = ROOT / "relay" / "codec" / "_py"
BINDINGS = {"lib"}                 # the crate's file that only binds
TWIN_OF_BINDINGS = {"__init__", "bindings"}


def crate_files() -> set[str]:
    return {path.stem for path in CRATE.glob("*.rs")} - BINDINGS


def twin_files() -> set[str]:
    return {path.stem for path in TWIN.glob("*.py")} - TWIN_OF_BINDINGS


def crate_imports(name: str) -> set[str]:
    """The crate's files that NAME.rs uses, outside its tests."""
    code = (CRATE / f"{name}.rs").read_text().split("#[cfg(test)]")[0]
    return set(re.findall(r"\bcrate::(\w+)", code)) & crate_files()


def twin_imports(name: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse((TWIN / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "relay.codec._py":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("relay.codec._py."):
                found.add(node.module.rsplit(".", 1)[1])
    return found - TWIN_OF_BINDINGS


def test_every_crate_file_has_a_twin_module_of_the_same_name_and_no_more():
    assert crate_files() == twin_files()


def test_each_twin_module_says_which_crate_file_it_mirrors():
    for name in twin_files():
        doc = ast.get_docstring(ast.parse((TWIN / f"{name}.py").read_text())) or ""
        assert doc.startswith(f"Twin of codec-rs/src/{name}.rs"), name
    for name in TWIN_OF_BINDINGS:
        assert "codec-rs/src/lib.rs" in (ast.get_docstring(ast.parse((TWIN / f"{name}.py").read_text())) or "")


def test_the_twin_modules_import_each_other_as_the_crate_files_do():
    assert {name: twin_imports(name) for name in twin_files()} == {name: crate_imports(name) for name in crate_files()}


def test_the_crate_bindings_only_bind():
    """lib.rs declares the modules and holds the PyO3 bindings, nothing else."""
    code = (CRATE / "lib.rs").read_text()
    outside = code.split('#[cfg(feature = "python")]')[0]
    items = [line for line in outside.splitlines() if line and not line.startswith("//")]
    assert all(re.fullmatch(r"pub mod \w+;", line) for line in items), items
