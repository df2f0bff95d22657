"""Exact arithmetic and JSON-safe values shared by the metric modules.

Money is ``Decimal``. Sums run in ``MONEY_CONTEXT``, whose precision is wide
enough that adding a million amounts of up to 1e15 with 40 decimal places
each is exact. Per-trade ratios that are floats (R multiples, log losses) are
summed as fixed-point integers, so that adding and later removing a trade's
contribution restores the sum bit for bit.
"""

from __future__ import annotations

import math
from decimal import Context, Decimal
from typing import Any

ZERO = Decimal(0)

# 80 significant digits: 15 integer digits, 6 more for a million terms, and
# room for 40 decimal places and more.
MONEY_CONTEXT = Context(prec=80)

# Floats are summed as integers in units of 2**-FIXED_BITS.
FIXED_BITS = 64
_FIXED_SCALE = float(2**FIXED_BITS)


def to_fixed(value: float) -> int:
    """Convert a finite float to fixed point; the same float always gives the same integer."""
    return round(value * _FIXED_SCALE)


def from_fixed(value: int) -> float:
    return value / _FIXED_SCALE


def money(value: Decimal | None) -> float | None:
    """Convert an amount for JSON, which has no decimal type."""
    if value is None:
        return None
    return float(value)


def ratio(value: float | None, digits: int = 6) -> float | None:
    """Round a ratio for JSON, or return None for NaN and infinities."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def decimal_ratio(numerator: Decimal, denominator: Decimal) -> float:
    return float(MONEY_CONTEXT.divide(numerator, denominator))


class Figures:
    """A JSON section under construction, with the reason for each null value.

    ``set`` stores a value; ``undefined`` stores null and a reason code, so
    that a client can tell "no losing trades" from "not computed".
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.reasons: dict[str, str] = {}

    def set(self, name: str, value: Any) -> None:
        self.values[name] = value

    def undefined(self, name: str, reason: str) -> None:
        self.values[name] = None
        self.reasons[name] = reason

    def maybe(self, name: str, value: Any, reason: str) -> None:
        """Store ``value``, or null with ``reason`` when it is None or not finite."""
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            self.undefined(name, reason)
        else:
            self.set(name, value)

    def to_dict(self) -> dict[str, Any]:
        document = dict(self.values)
        if self.reasons:
            document["undefined"] = dict(self.reasons)
        return document
