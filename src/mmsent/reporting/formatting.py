"""Numbers as a reader wants them in tables and facts: 3-4 significant digits, mean ± std, intervals as [a, b]."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

SCORE_DIGITS = 4  # scores in [-1, 1]: 0.6474, aligned in a column


def as_number(value: object) -> float | None:
    """The number a cell holds (a float, an int or a numeric string), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def is_integral(x: float) -> bool:
    return math.isfinite(x) and x == int(x)


def integer(x: float) -> str:
    """4,709 stays 4709 (a guid, a seed); thousands separators from 10,000 on (431,371 parameters)."""
    return f"{int(x):,}" if abs(x) >= 10_000 else str(int(x))


def significant(x: float, digits: int = 4) -> str:
    """4 significant digits without exponent notation: 191.4, 0.05, 1734, 26,512,259."""
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 10 ** digits:
        return integer(round(x))
    text = f"{x:.{digits}g}"
    if "e" in text:  # tiny numbers: fixed decimals are clearer than 1.2e-05
        text = f"{x:.{digits + 2}f}".rstrip("0").rstrip(".")
    return text


def number(value: object) -> str:
    """One value on its own (a fact): scores to 4 decimals, integers as they are, the rest to 4 significant digits."""
    x = as_number(value)
    if x is None:
        return "" if value is None else str(value)
    if isinstance(value, int) or (isinstance(value, str) and is_integral(x) and "." not in value):
        return integer(x)
    if abs(x) <= 1:
        return f"{x:.{SCORE_DIGITS}f}"
    return significant(x)


def column_format(values: Sequence[object]) -> Callable[[object], str]:
    """One rule for a whole column, so that its numbers line up and read alike.

    Every number integral: integers (a level column of 1, 2, 4 stays so). Every number within [-1, 1]
    and some fractional: scores, to 4 decimals. Otherwise 4 significant digits each (levels 0.05 and 25,
    seconds 7.62 and 191.4). Text cells pass unchanged.
    """
    numbers = [x for x in (as_number(v) for v in values if v not in ("", None)) if x is not None]

    def cell(value: object) -> str:
        x = as_number(value)
        if x is None:
            return "" if value is None else str(value)
        if all(is_integral(n) for n in numbers):
            return integer(x)
        if all(abs(n) <= 1 for n in numbers):
            return f"{x:.{SCORE_DIGITS}f}"
        return significant(x)

    return cell


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.{SCORE_DIGITS}f} ± {std:.{SCORE_DIGITS}f}"


def interval(low: float, high: float) -> str:
    return f"[{low:.{SCORE_DIGITS}f}, {high:.{SCORE_DIGITS}f}]"


def fact_text(value: object) -> str:
    """A manifest value for a reader: mappings as `key value; ...`, lists joined, numbers formatted."""
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ') if isinstance(k, str) else k}: {fact_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(fact_text(v) for v in value)
    return number(value)
