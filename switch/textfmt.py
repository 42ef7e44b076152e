"""The shell's two text primitives: sizes in binary units, and plain aligned tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["human_size", "table"]

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    index = -1
    while value >= 1024 and index < len(_UNITS) - 1:
        value /= 1024
        index += 1
    unit = _UNITS[index]
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    all_rows = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in all_rows
    )
