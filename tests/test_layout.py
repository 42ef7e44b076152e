"""The dependency rules of DESIGN.md ("Layers"), checked on the source with ``ast``.

- nothing imports ``switch`` except ``switch`` itself;
- ``volume_manager`` imports none of ``switch``, ``target``, ``policies``;
- ``policies`` imports none of ``switch``, ``target``, ``volume_manager``;
- ``target`` imports from ``volume_manager`` only ``volume_manager.blockdev`` and
  ``volume_manager.errors`` (the block-device interface);
- protocol logic is sans-I/O: modules under ``target/scsi`` and ``target/iscsi`` do not
  import ``asyncio``, except the asyncio shell's modules, ``server.py`` and its send
  path ``sending.py``.

Imports anywhere in a module count (top level, inside functions, under ``TYPE_CHECKING``),
as do ``importlib.import_module("...")`` and ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("switch", "target", "volume_manager", "policies")
TARGET_MAY_USE = ("volume_manager.blockdev", "volume_manager.errors")
SANS_IO_DIRS = (("target", "scsi"), ("target", "iscsi"))
SANS_IO_EXEMPT = frozenset({"server.py", "sending.py"})  # the asyncio shell


@dataclass(frozen=True)
class Import:
    path: Path  # relative to the scanned root
    line: int
    name: str  # absolute dotted name; for ``from X import n`` it is ``X.n``

    @property
    def top(self) -> str:
        return self.name.split(".", 1)[0]

    def within(self, module: str) -> bool:
        return self.name == module or self.name.startswith(module + ".")

    def where(self) -> str:
        return f"{self.path.as_posix()}:{self.line}: imports {self.name}"


def python_files(root: Path, package: str) -> Iterator[Path]:
    base = root / package
    if not base.is_dir():
        return
    for path in sorted(base.rglob("*.py*")):
        if path.suffix in (".py", ".pyi") and "__pycache__" not in path.parts:
            yield path


def _literal_import_call(node: ast.Call) -> str | None:
    func = node.func
    is_import_module = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )
    if not is_import_module or not node.args:
        return None
    arg = node.args[0]
    if (
        isinstance(arg, ast.Constant)
        and isinstance(arg.value, str)
        and not arg.value.startswith(".")
    ):
        return arg.value
    return None


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    rel = path.relative_to(root)
    # The package a relative import with level 1 refers to: the file's own directory
    # (for ``__init__.py`` too, since that file *is* the directory's package).
    package_parts = list(rel.parent.parts)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                keep = len(package_parts) - (node.level - 1)
                base_parts = package_parts[: max(keep, 0)]
                if node.module:
                    base_parts = [*base_parts, *node.module.split(".")]
                base = ".".join(base_parts)
            else:
                base = node.module or ""
            for alias in node.names:
                yield Import(rel, node.lineno, f"{base}.{alias.name}" if base else alias.name)
        elif isinstance(node, ast.Call):
            name = _literal_import_call(node)
            if name is not None:
                yield Import(rel, node.lineno, name)


def _breach(package: str, sans_io: bool, imp: Import) -> str | None:
    """Why ``imp`` in ``package`` breaks a rule, or None. One reason per import."""
    if package != "switch" and imp.top == "switch":
        return "nothing may import switch"
    if package == "volume_manager" and imp.top in ("target", "policies"):
        return f"volume_manager may not import {imp.top}"
    if package == "policies" and imp.top in ("target", "volume_manager"):
        return f"policies may not import {imp.top}"
    if (
        package == "target"
        and imp.top == "volume_manager"
        and not any(imp.within(m) for m in TARGET_MAY_USE)
    ):
        return "target may use only " + " and ".join(TARGET_MAY_USE)
    if sans_io and imp.top == "asyncio":
        shell = " and ".join(sorted(SANS_IO_EXEMPT))
        return f"target/scsi and target/iscsi are sans-I/O; only {shell} may use asyncio"
    return None


def violations(root: Path) -> list[str]:
    """Every breach of the layering rules under ``root``, as ``file:line: ... (why)`` lines."""
    found: list[str] = []
    for package in PACKAGES:
        for path in python_files(root, package):
            rel_parts = path.relative_to(root).parts
            sans_io = path.name not in SANS_IO_EXEMPT and any(
                rel_parts[: len(d)] == d for d in SANS_IO_DIRS
            )
            for imp in imports_of(root, path):
                reason = _breach(package, sans_io, imp)
                if reason is not None:
                    found.append(f"{imp.where()} ({reason})")
    return found


def test_layers_follow_the_dependency_rules() -> None:
    assert (ROOT / "switch" / "cli.py").is_file(), f"not the project root: {ROOT}"
    found = violations(ROOT)
    assert not found, "layering rules of DESIGN.md broken:\n" + "\n".join(found)


# --- the checker itself must be able to fail ----------------------------------------------


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_checker_accepts_allowed_imports(tmp_path: Path) -> None:
    _write(tmp_path, "switch/__init__.py", "import switch.cli\nimport target, policies\n")
    _write(tmp_path, "target/scsi/sbc.py", "from volume_manager.blockdev import BlockDevice\n")
    _write(tmp_path, "target/scsi/sense.py", "from volume_manager import errors\n")
    _write(tmp_path, "target/iscsi/server.py", "import asyncio\nimport volume_manager.errors\n")
    _write(tmp_path, "target/lio/tcmu.py", "import asyncio\nfrom ..scsi import sbc\n")
    _write(tmp_path, "volume_manager/log.py", "from .blockdev import BlockDevice\nimport numpy\n")
    _write(tmp_path, "policies/schema.py", "from . import decide\nimport dataclasses\n")
    assert violations(tmp_path) == []


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        (
            "target/scsi/sbc.py",
            "x = 1\nimport switch.config\n",
            "target/scsi/sbc.py:2: imports switch.config",
        ),
        (
            "policies/decide.py",
            "from switch import cli\n",
            "policies/decide.py:1: imports switch.cli",
        ),
        (
            "volume_manager/log.py",
            "def f():\n    from target.scsi import sbc\n",
            "volume_manager/log.py:2:",
        ),
        (
            "volume_manager/log.py",
            "from policies.schema import Policy\n",
            "imports policies.schema.Policy",
        ),
        (
            "volume_manager/log.py",
            "import importlib\nimportlib.import_module('switch')\n",
            "log.py:2:",
        ),
        ("policies/decide.py", "import volume_manager.catalog\n", "policies/decide.py:1:"),
        (
            "target/scsi/sbc.py",
            "from volume_manager import fileio\n",
            "imports volume_manager.fileio",
        ),
        (
            "target/lio/tcmu.py",
            "import volume_manager\n",
            "target/lio/tcmu.py:1: imports volume_manager ",
        ),
        ("target/iscsi/pdu.py", "from volume_manager import *\n", "imports volume_manager.*"),
        ("target/scsi/sbc.py", "import asyncio\n", "target/scsi/sbc.py:1: imports asyncio"),
        ("target/iscsi/login.py", "from asyncio import Queue\n", "imports asyncio.Queue"),
        (
            "target/iscsi/__init__.py",
            "from .. import scsi\nimport asyncio.streams\n",
            "__init__.py:2:",
        ),
    ],
)
def test_checker_reports_each_violation_with_file_and_line(
    tmp_path: Path, rel: str, text: str, expected: str
) -> None:
    _write(tmp_path, rel, text)
    found = violations(tmp_path)
    assert len(found) == 1, found
    assert expected in found[0], found
