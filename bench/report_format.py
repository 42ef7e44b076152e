"""How the benchmarks print a measured value: the precision follows the magnitude."""

from __future__ import annotations

__all__ = ["number"]


def number(v: float) -> str:
    if v != v:  # NaN: nothing was measured
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"
