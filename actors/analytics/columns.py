"""Compact columns of exact amounts for the per-trade series.

A million Decimal objects take about 100 MB; a million 64-bit integers in an
``array`` take 8 MB. ``ScaledColumn`` stores amounts as integers in units of
10**-scale, raises the scale when a value with more decimal places arrives,
and falls back to a Python list when a value does not fit in 64 bits.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, MutableSequence
from decimal import Decimal

from actors.analytics.values import MONEY_CONTEXT

# Amounts with more decimal places than this are rounded (half even) to it in
# the per-trade series; the sums in ``stats`` stay exact regardless.
MAX_SCALE = 24


def decimal_places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _new_storage(values: Iterable[int]) -> MutableSequence[int]:
    items = list(values)
    try:
        return array("q", items)
    except OverflowError:
        return items


class ScaledColumn:
    """A sequence of integers, each an amount in units of 10**-scale.

    The owner (``TradeSeries``) chooses one scale for all its columns and
    rescales them together.
    """

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: MutableSequence[int] = array("q")

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> int:
        return self.values[index]

    def _widen(self) -> None:
        if isinstance(self.values, array):
            self.values = list(self.values)

    def append(self, value: int) -> None:
        try:
            self.values.append(value)
        except OverflowError:
            self._widen()
            self.values.append(value)

    def insert(self, index: int, value: int) -> None:
        try:
            self.values.insert(index, value)
        except OverflowError:
            self._widen()
            self.values.insert(index, value)

    def set(self, index: int, value: int) -> None:
        try:
            self.values[index] = value
        except OverflowError:
            self._widen()
            self.values[index] = value

    def pop(self, index: int) -> int:
        return self.values.pop(index)

    def truncate(self, length: int) -> None:
        del self.values[length:]

    def multiply(self, factor: int) -> None:
        self.values = _new_storage(value * factor for value in self.values)


def to_units(value: Decimal, scale: int) -> int:
    """Convert ``value`` to integer units of 10**-scale, exactly when it has at most ``scale`` places."""
    return int(MONEY_CONTEXT.to_integral_value(MONEY_CONTEXT.scaleb(value, scale)))


def from_units(units: int, scale: int) -> Decimal:
    return MONEY_CONTEXT.scaleb(Decimal(units), -scale)
