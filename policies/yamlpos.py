"""Read YAML and remember the line of every key and item (PyYAML's safe composer only).

``load(text)`` returns a :class:`Document`: ``data`` is what ``yaml.safe_load`` would give,
and ``where`` is a :class:`Where` tree of the same shape holding, for each mapping entry,
the line of its key and, for each sequence item, the line where the item starts. Any
path can be looked up (``where.line_of(("targets", 0, "iqn"))``): a path that leaves the
tree answers with its deepest existing prefix, so a missing key reports the line of the
mapping that lacks it. ``where.describe(path)`` spells the path as ``targets[0].iqn``.

The tree is built by walking the node graph of ``yaml.compose`` rather than by
``construct_document``, for three reasons:

* node marks carry the lines, which constructed Python objects have lost;
* PyYAML keeps the last of two equal keys in a mapping without a word; the walk reports
  each duplicate (non-fatal: reading goes on so that other problems are found too);
* the walk refuses what a configuration file has no use for and would otherwise mislead:
  merge keys (``<<``), non-scalar keys, collection tags other than map and seq, and
  alias expansions past :data:`MAX_NODES` (the "billion laughs").

Scalars are constructed by ``SafeLoader`` itself, except that timestamps stay strings:
a time is a POINT for the engine to parse, not a ``datetime``. Fatal problems (syntax,
the refusals above) raise :class:`YamlSyntaxError` carrying a 1-based line.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["MAX_NODES", "Document", "Kind", "Path", "Problem", "Where", "YamlSyntaxError", "load"]

Path = tuple[Hashable, ...]

MAX_NODES = 1_000_000  # far above any real configuration; bounds alias expansion
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class YamlSyntaxError(Exception):
    """The text is not YAML we accept; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class Problem:
    """A non-fatal problem found while reading (today: a duplicate key)."""

    line: int
    path: Path
    message: str


class Kind(enum.Enum):
    MAPPING = "mapping"
    SEQUENCE = "sequence"
    SCALAR = "scalar"


@dataclass(slots=True)
class Where:
    """Line of one value in the document, and the lines of its entries or items."""

    line: int
    kind: Kind
    children: dict[Hashable, Where] = field(default_factory=dict)

    def child(self, key: Hashable) -> Where | None:
        found = self.children.get(key)
        if found is None and self.kind is Kind.MAPPING:
            # A validator may have converted the key (LUN "3" -> 3): match its spelling.
            text = str(key)
            found = next((w for k, w in self.children.items() if str(k) == text), None)
        return found

    def walk(self, path: Path) -> list[Where]:
        """The nodes along ``path`` from this one, as far as the document goes."""
        nodes = [self]
        for key in path:
            nxt = nodes[-1].child(key)
            if nxt is None:
                break
            nodes.append(nxt)
        return nodes

    def line_of(self, path: Path) -> int:
        return self.walk(path)[-1].line

    def describe(self, path: Path) -> str:
        """``("targets", 0, "luns", 3)`` -> ``targets[0].luns.3``; "" for the document."""
        nodes = self.walk(path)
        out = ""
        for depth, key in enumerate(path):
            parent = nodes[depth] if depth < len(nodes) else None
            in_list = parent.kind is Kind.SEQUENCE if parent is not None else isinstance(key, int)
            if in_list:
                out += f"[{key}]"
            else:
                out += f".{key}" if out else str(key)
        return out


@dataclass(frozen=True, slots=True)
class Document:
    data: Any
    where: Where
    problems: tuple[Problem, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves timestamps as the text that was written."""


def _timestamp_as_text(loader: yaml.SafeLoader, node: Node) -> str:
    assert isinstance(node, ScalarNode)
    return str(loader.construct_scalar(node))


_Loader.add_constructor(_TIMESTAMP_TAG, _timestamp_as_text)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Walker:
    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.problems: list[Problem] = []
        self.count = 0

    def value(self, node: Node, path: Path, line: int) -> tuple[Any, Where]:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlSyntaxError(_line(node), f"more than {MAX_NODES} values (alias expansion?)")
        if isinstance(node, MappingNode):
            return self.mapping(node, path, line)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                raise YamlSyntaxError(_line(node), f"unsupported tag {node.tag!r}")
            items: list[Any] = []
            where = Where(line, Kind.SEQUENCE)
            for index, item in enumerate(node.value):
                data, where.children[index] = self.value(item, (*path, index), _line(item))
                items.append(data)
            return items, where
        return self.scalar(node), Where(line, Kind.SCALAR)

    def scalar(self, node: Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise _syntax_error(exc) from exc

    def mapping(self, node: MappingNode, path: Path, line: int) -> tuple[Any, Where]:
        if node.tag != _MAP_TAG:
            raise YamlSyntaxError(_line(node), f"unsupported tag {node.tag!r}")
        out: dict[Any, Any] = {}
        where = Where(line, Kind.MAPPING)
        for key_node, value_node in node.value:
            key_line = _line(key_node)
            if not isinstance(key_node, ScalarNode):
                raise YamlSyntaxError(key_line, "a key must be a plain value, not a collection")
            if key_node.tag == _MERGE_TAG:
                raise YamlSyntaxError(key_line, "merge keys ('<<') are not supported")
            key = self.scalar(key_node)
            if key in out:
                self.problems.append(Problem(
                    key_line, (*path, key),
                    f"duplicate key (first at line {where.children[key].line});"
                    " only one may be given"))
                del out[key]  # the later one is kept, in the position it was written
            out[key], where.children[key] = self.value(value_node, (*path, key), key_line)
        return out, where


def _syntax_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
    mark = exc.problem_mark or exc.context_mark
    line = int(mark.line) + 1 if mark is not None else 1
    message = exc.problem or "invalid YAML"
    if exc.context:
        where = ""
        if exc.context_mark is not None and exc.context_mark.line + 1 != line:
            where = f" at line {exc.context_mark.line + 1}"
        message = f"{message} ({exc.context}{where})"
    return YamlSyntaxError(line, message)


def load(text: str) -> Document:
    """Parse one YAML document; an empty document (or ``null``) reads as ``None``."""
    try:
        loader = _Loader(text)  # the reader checks every character here
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "?")
        raise YamlSyntaxError(line, f"character U+{code:04X} is not allowed in YAML") from exc
    try:
        root = loader.get_single_node()
        if root is None:
            return Document(None, Where(1, Kind.SCALAR), ())
        walker = _Walker(loader)
        data, where = walker.value(root, (), _line(root))
        return Document(data, where, tuple(walker.problems))
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc) from exc
    except RecursionError as exc:
        raise YamlSyntaxError(1, "nesting too deep") from exc
    finally:
        loader.dispose()
