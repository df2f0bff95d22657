"""Daily returns on a UTC calendar grid and the ratios built on them.

The grid runs from the UTC day of the first resolved trade to that of the
last one, every day included, so that a day without trades is a return of
0. The equity at the end of day d is the starting balance plus the realized
PnL up to d, and the return of day d is its PnL divided by the equity at the
end of the day before. The ratios follow the definitions of
empyrical-reloaded 0.7 (docs/metrics.md lists them), which the tests check.

``DailyReturns`` keeps the running state after each grid day, so that a
change on day d recomputes days d and later only: a trade resolved today
costs one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from actors.analytics.series import TradeSeries
from actors.analytics.values import Figures, ratio

DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class _DayState:
    """The running figures after one grid day."""

    equity: int
    count: int
    # Welford's running mean and sum of squared deviations of the excess return.
    mean: float
    m2: float
    # Sum of squared excess returns below 0, over every day.
    downside: float
    low: float
    high: float
    peak: int
    max_drawdown: float
    # True once the equity at the start of a day was not positive: returns
    # from there on are undefined.
    broke: bool


class DailyReturns:
    """Return-based ratios over the series' daily PnL, recomputed from the first changed day."""

    def __init__(self, series: TradeSeries, periods_per_year: int, risk_free: float) -> None:
        self.series = series
        self.periods_per_year = periods_per_year
        self.risk_free = risk_free
        self._first_day: int | None = None
        self._scale = series.scale
        self._states: list[_DayState] = []

    def _update(self) -> list[_DayState]:
        series = self.series
        if not series.daily_pnl:
            self._states = []
            self._first_day = None
            series.dirty_day = None
            return self._states
        if series.dirty_day is None and self._first_day is not None and series.scale == self._scale:
            return self._states
        first, last = min(series.daily_pnl), max(series.daily_pnl)
        if first != self._first_day or series.scale != self._scale or series.dirty_day is None:
            start = 0
        else:
            # Days between the last computed one and a new later day are
            # computed too, as days without trades.
            start = min(max(0, series.dirty_day - first), len(self._states))
        self._first_day = first
        self._scale = series.scale
        series.dirty_day = None
        del self._states[start:]

        base = series.base_units()
        if self._states:
            state = self._states[-1]
        else:
            state = _DayState(base, 0, 0.0, 0.0, 0.0, math.inf, -math.inf, base, 0.0, base <= 0)
        equity, count, mean, m2, downside = state.equity, state.count, state.mean, state.m2, state.downside
        low, high, peak, max_drawdown, broke = state.low, state.high, state.peak, state.max_drawdown, state.broke
        daily = series.daily_pnl
        risk_free = self.risk_free
        states = self._states
        for day in range(first + start, last + 1):
            pnl = daily.get(day, 0)
            if not broke and equity > 0:
                excess = pnl / equity - risk_free
                count += 1
                delta = excess - mean
                mean += delta / count
                m2 += delta * (excess - mean)
                if excess < 0:
                    downside += excess * excess
                low = min(low, excess)
                high = max(high, excess)
                equity += pnl
                if equity > peak:
                    peak = equity
                elif peak > 0:
                    max_drawdown = max(max_drawdown, (peak - equity) / peak)
            else:
                broke = True
                equity += pnl
            states.append(_DayState(equity, count, mean, m2, downside, low, high, peak, max_drawdown, broke))
        return states

    def to_dict(self, min_days: int) -> dict[str, Any]:
        figures = Figures()
        series = self.series
        names = ("sharpe", "sortino", "cagr", "calmar", "max_drawdown", "volatility", "total_return")
        figures.set("periods_per_year", self.periods_per_year)
        if series.base_units() <= 0:
            daily = series.daily_pnl
            days = max(daily) - min(daily) + 1 if daily else 0
            figures.set("days", days)
            figures.set("small_sample", days < min_days)
            for name in names:
                figures.undefined(name, "no_starting_balance")
            return figures.to_dict()
        states = self._update()
        days = len(states)
        figures.set("days", days)
        figures.set("first_day", None if self._first_day is None else _day_text(self._first_day))
        figures.set("last_day", None if not states else _day_text(self._first_day + days - 1))  # type: ignore[operator]
        figures.set("small_sample", days < min_days)
        if not states:
            for name in names:
                figures.undefined(name, "no_trades")
            return figures.to_dict()
        end = states[-1]
        base = series.base_units()
        if end.broke:
            # The daily returns stop being defined once the equity reaches
            # 0, but the growth from start to end stays defined.
            for name in names:
                if name != "total_return":
                    figures.undefined(name, "equity_not_positive")
            figures.set("total_return", ratio(end.equity / base - 1, 9))
            return figures.to_dict()

        scale = math.sqrt(self.periods_per_year)
        figures.set("total_return", ratio(end.equity / base - 1, 9))
        figures.set("max_drawdown", ratio(end.max_drawdown, 9))
        if days < 2:
            for name in ("sharpe", "sortino", "volatility"):
                figures.undefined(name, "fewer_than_two_periods")
        else:
            std = math.sqrt(end.m2 / (days - 1))
            figures.set("volatility", ratio(std * scale, 9))
            if end.low == end.high:
                figures.undefined("sharpe", "zero_variance")
            else:
                figures.maybe("sharpe", ratio(end.mean / std * scale, 9), "zero_variance")
            downside = math.sqrt(end.downside / days) * scale
            if downside == 0:
                figures.undefined("sortino", "no_losing_periods")
            else:
                figures.maybe("sortino", ratio(end.mean * self.periods_per_year / downside, 9), "no_losing_periods")
        cagr = self._cagr(end.equity / base, days)
        if days < 2 or cagr is None:
            figures.undefined("cagr", "too_short_to_annualize")
            figures.undefined("calmar", "too_short_to_annualize")
        else:
            figures.set("cagr", ratio(cagr, 9))
            if end.max_drawdown <= 0:
                figures.undefined("calmar", "no_drawdown")
            else:
                figures.maybe("calmar", ratio(cagr / end.max_drawdown, 9), "too_short_to_annualize")
        return figures.to_dict()

    def _cagr(self, growth: float, days: int) -> float | None:
        try:
            value = growth ** (self.periods_per_year / days) - 1
        except OverflowError:
            return None
        return value if math.isfinite(value) else None

    def returns(self) -> list[float]:
        """Return each grid day's return (not the excess), for tests and tools."""
        states = self._update()
        series = self.series
        values: list[float] = []
        equity = series.base_units()
        for state in states:
            values.append((state.equity - equity) / equity)
            equity = state.equity
        return values


def _day_text(day: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(day * 86_400, UTC).date().isoformat()
