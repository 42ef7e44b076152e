"""The protocol core is sans-I/O: no module of target/iscsi except the shell (server.py
and its send path, sending.py) imports asyncio (DESIGN.md "Rules of the house"; STYLE.md
guide item 1). Also no sockets."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "target" / "iscsi"
FORBIDDEN = {"asyncio", "socket", "selectors", "trio", "uvloop"}
EXEMPT = {"server.py", "sending.py"}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_protocol_modules_import_no_io() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 8, modules
    offenders = {
        p.name: sorted(imported_modules(p) & FORBIDDEN)
        for p in modules
        if p.name not in EXEMPT and imported_modules(p) & FORBIDDEN
    }
    assert offenders == {}


def test_the_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from asyncio import sleep\n", encoding="utf-8")
    assert "asyncio" in imported_modules(bad)
