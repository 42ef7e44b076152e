"""Problems found in a YAML file validated by pydantic, located by line, and the value
syntax (sizes, names) that the policy file (policies/schema.py) and the switch's
configuration (switch/config.py) share.

``shape_issues`` turns a pydantic ``ValidationError`` into :class:`Issue` objects whose
line comes from the :mod:`policies.yamlpos` document and whose message is a sentence that
never shows the offending value (it may be a secret), only its YAML type.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from policies import yamlpos

__all__ = ["Issue", "Loc", "YamlError", "check_name", "is_name", "keys_at", "load_document",
           "message", "parse_size", "read_text", "shape_issues"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a file; ``line`` is 1-based, ``path`` like ``a.b[0].c``."""

    filename: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.filename if self.line is None else f"{self.filename}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class YamlError(Exception):
    """A file is invalid; ``issues`` holds every problem found, sorted by line."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = tuple(sorted(issues, key=lambda i: i.line or 0))
        super().__init__("\n".join(str(i) for i in self.issues))


_YAML_TYPES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "true/false", type(None): "nothing (null)"}
_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}


def _strip(tp: Any) -> Any:
    """The model, list or dict type inside ``Annotated[...]`` and ``X | None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _keys_of(tp: Any) -> list[str]:
    return [info.alias or name for name, info in tp.model_fields.items()]


def keys_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model at ``loc`` below ``root`` accepts (for "unknown key")."""
    tp: Any = root
    for part in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            info = next((i for n, i in tp.model_fields.items() if (i.alias or n) == part), None)
            if info is None:
                return []
            tp = info.annotation
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _strip(tp)
    return _keys_of(tp) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def message(error: ErrorDetails, root: type[BaseModel], loc: Loc) -> str:
    """A pydantic error as a sentence. Only the *type* of the input is ever shown."""
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        keys = keys_at(root, loc[:-1])
        return "unknown key" + (f"; expected one of: {', '.join(keys)}" if keys else "")
    if kind in _EXPECTED:
        value = error.get("input")
        msg = f"{_EXPECTED[kind]}, got {_YAML_TYPES.get(type(value), 'something else')}"
        if kind == "string_type" and isinstance(value, int | float):
            msg += " (quote it to make it a string)"
        return msg
    msg = error["msg"].removeprefix("Value error, ")
    return msg.replace("Input should be ", "expected ", 1)


def shape_issues(exc: ValidationError, root: type[BaseModel], doc: yamlpos.Document,
                 filename: str, prefix: Loc = (),
                 explain: Callable[[ErrorDetails, type[BaseModel], Loc], str] = message,
                 ) -> list[Issue]:
    """The issues of a validation of ``root`` at ``prefix`` of ``doc``."""
    issues = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if loc and loc[-1] == "[key]":  # the key itself is wrong: report at the key
            loc = loc[:-1]
        full = (*prefix, *loc)
        issues.append(Issue(filename, doc.where.line_of(full), doc.where.describe(full),
                            explain(error, root, loc)))
    return issues


def read_text(path: str | os.PathLike[str], error: type[YamlError]) -> str:
    """A file's text; ``error`` (with the file's name, and the line of the first byte
    that is not UTF-8) if it cannot be read or decoded."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise error([Issue(filename, None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error([Issue(filename, line, "", "the file is not UTF-8")]) from None


def load_document(text: str, filename: str, error: type[YamlError]
                  ) -> tuple[yamlpos.Document, list[Issue]]:
    """The YAML document of ``text`` and the problems the reader itself found (duplicate
    keys and the like); ``error`` for text that is not YAML."""
    try:
        doc = yamlpos.load(text)
    except yamlpos.YamlSyntaxError as exc:
        raise error([Issue(filename, exc.line, "", f"invalid YAML: {exc.message}")]) from None
    return doc, [Issue(filename, p.line, doc.where.describe(p.path), p.message)
                 for p in doc.problems]


_SIZE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?) ?(?:(?P<unit>[kmgt])(?:ib|b)?|b)?", re.I)
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: object, *, example: str = "64MiB or 1G") -> int:
    """Bytes in ``value``: an int, or a string such as ``512``, ``64MiB``, ``1G``, ``1.5T``.

    Units K, M, G and T are binary whatever the spelling (``1G == 1GiB == 1GB == 2**30``).
    ``example`` shows the caller's typical sizes in the message for text not understood.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a size is a number of bytes or a string such as '64MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return value
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"size {value!r} is negative")
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"size {value!r} is not understood: use bytes or a number with a"
                         f" unit K, M, G or T (binary, e.g. {example})")
    unit = m.group("unit")
    total = Fraction(m.group("num")) * (_UNITS[unit.lower()] if unit else 1)
    if total.denominator != 1:
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(total)


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def is_name(text: str) -> bool:
    return _NAME.fullmatch(text) is not None


def check_name(name: str) -> str:
    """A name of something in a file (a volume, an image, a policy, a class)."""
    if not is_name(name):
        raise ValueError(f"bad name {name!r}: use 1-64 letters, digits, '_', '.', '-',"
                         " not starting with '.' or '-'")
    return name
