"""The I/O layering (DESIGN.md section 4, issue 11 item 9): target-specific
I/O lives in encfs/targets below file.py and fs.py, and nothing below fs.py
imports it (no import cycle between fs.py, file.py and the S3 code)."""

from __future__ import annotations

import ast
from pathlib import Path

import encfs

PKG = Path(encfs.__file__).parent


def _imports(path: Path) -> set[str]:
    """Modules imported by ``path`` at run time (``if TYPE_CHECKING:`` blocks
    excluded), as dotted names relative to the encfs package."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(PKG).with_suffix("").parts
    package = parts[:-1]  # the package holding the module (also for __init__)
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)])
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" if mod else a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("encfs"):
            out.add(node.module.removeprefix("encfs").lstrip("."))
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("encfs").lstrip(".") for a in node.names if a.name.startswith("encfs"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def test_targets_import_nothing_above_them():
    for path in (PKG / "targets").glob("*.py"):
        bad = {m for m in _imports(path) if m.split(".")[0] in {"fs", "file", "readahead", "aio", "cli"}}
        assert not bad, f"{path.name} imports {bad}"


def test_file_and_readahead_do_not_import_fs():
    for name in ("file.py", "readahead.py", "aio.py"):
        bad = {m for m in _imports(PKG / name) if m == "fs" or m.startswith("fs.")}
        assert not bad, f"{name} imports {bad}"


def test_compatibility_names_still_import():
    from encfs.sinks import TEMP_MARK, open_sink  # moved to encfs.targets
    from encfs.targets import TEMP_MARK as moved

    assert TEMP_MARK == moved and callable(open_sink)
