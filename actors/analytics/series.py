"""Resolved trades in resolution order: the equity curve, streaks and windows.

Each resolved trade is one row of compact columns sorted by (resolution time,
tie-break), where the tie-break is the CRC-32 of the trade id, so that the
order never depends on the order in which messages arrived. Beside the data
columns the series keeps prefix columns (cumulative PnL, gross profit, wins,
losses) and, every ``CHECKPOINT_EVERY`` rows, the state of a scan that tracks
the peak, the maximum drawdowns and the streaks.

A change at row k invalidates the prefix columns from k on; the next query
rescans from the checkpoint at or before k. A trade resolved after every
other one therefore costs O(1), and a late or corrected one costs
O(rows after it), which is small for the usual late arrival of a few seconds.
Any sum over a time range is two binary searches and a subtraction of
prefix sums.
"""

from __future__ import annotations

import zlib
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from actors.analytics.columns import MAX_SCALE, ScaledColumn, decimal_places, from_units, to_units

CHECKPOINT_EVERY = 1024

WIN, DRAW, LOSS = 1, 0, -1


def tie_break(trade_id: str) -> int:
    return zlib.crc32(trade_id.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Drawdown:
    """One drawdown of the curve; amounts in series units, times in epoch microseconds.

    ``peak_us`` is None when the peak is the starting balance before the
    first trade; ``recovered_us`` is None while the curve is still below the peak.
    """

    amount: int
    peak: int
    peak_us: int | None
    trough_us: int | None
    recovered_us: int | None
    percent: float | None


@dataclass(frozen=True, slots=True)
class RangeTotals:
    """Sums over a contiguous run of rows; amounts in series units."""

    trades: int
    wins: int
    losses: int
    pnl: int
    gross_profit: int

    @property
    def draws(self) -> int:
        return self.trades - self.wins - self.losses

    @property
    def gross_loss(self) -> int:
        return self.gross_profit - self.pnl


# The scan state after a row, as a tuple for cheap checkpoints. Fields:
_CUM, _GP, _WINS, _LOSSES = 0, 1, 2, 3
_PEAK, _PEAK_US = 4, 5
_MDD, _MDD_PEAK, _MDD_PEAK_US, _MDD_TROUGH_US, _MDD_RECOVERED_US = 6, 7, 8, 9, 10
_PDD, _PDD_PEAK, _PDD_PEAK_US, _PDD_TROUGH_US, _PDD_RECOVERED_US = 11, 12, 13, 14, 15
_STREAK_SIGN, _STREAK_LEN, _MAX_WIN_STREAK, _MAX_LOSS_STREAK = 16, 17, 18, 19
_LARGEST_WIN, _LARGEST_LOSS, _PDD_AMOUNT = 20, 21, 22

_INITIAL_STATE = (0, 0, 0, 0, 0, None, 0, 0, None, None, None, 0.0, 0, None, None, None,
                  None, 0, 0, 0, 0, 0, 0)


class TradeSeries:
    """The resolved trades as sorted compact columns with cached scans."""

    # Rows between two scan checkpoints; tests lower it to cross many.
    checkpoint_every = CHECKPOINT_EVERY

    def __init__(self, starting_balance: Decimal) -> None:
        self.starting_balance = starting_balance
        self.scale = decimal_places(starting_balance)
        self.times = array("q")
        self.ties = array("L")
        self.pnl = ScaledColumn()
        self.outcomes = array("b")
        self.cum_pnl = ScaledColumn()
        self.cum_gross_profit = ScaledColumn()
        self.cum_wins = array("l")
        self.cum_losses = array("l")
        # PnL per UTC day (day number since the epoch), in series units.
        self.daily_pnl: dict[int, int] = {}
        self._valid = 0
        # Rows that ``_end_state`` covers; while nothing before them changed,
        # a scan goes on from it instead of from a checkpoint.
        self._state_rows = 0
        self._checkpoints: list[tuple[Any, ...]] = [_INITIAL_STATE]
        self._end_state: tuple[Any, ...] = _INITIAL_STATE
        # Bumped on every change, so that callers can cache what they derive.
        self.version = 0
        # The earliest UTC day whose PnL changed since ``DailyReturns`` last
        # read it; None when no day changed.
        self.dirty_day: int | None = None
        # The earliest resolution time changed since ``CalendarTables`` last
        # read it; None when nothing changed.
        self.dirty_us: int | None = None

    def __len__(self) -> int:
        return len(self.times)

    # ------------------------------------------------------------------
    # Changes

    def units(self, amount: Decimal) -> int:
        """Convert an amount to series units, raising the scale first when needed."""
        places = min(decimal_places(amount), MAX_SCALE)
        if places > self.scale:
            self._rescale(places)
        return to_units(amount, self.scale)

    def _rescale(self, scale: int) -> None:
        factor = 10 ** (scale - self.scale)
        self.scale = scale
        self.pnl.multiply(factor)
        self.daily_pnl = {day: value * factor for day, value in self.daily_pnl.items()}
        self.cum_pnl.multiply(factor)
        self.cum_gross_profit.multiply(factor)
        self._invalidate(0)
        self._touch_day(-(2**62))

    def _invalidate(self, index: int) -> None:
        self.version += 1
        self._valid = min(self._valid, index)

    def _touch_day(self, day: int) -> None:
        if self.dirty_day is None or day < self.dirty_day:
            self.dirty_day = day
        start_us = day * 86_400_000_000
        if self.dirty_us is None or start_us < self.dirty_us:
            self.dirty_us = start_us

    def _position(self, time_us: int, tie: int) -> int:
        index = bisect_right(self.times, time_us)
        while index > 0 and self.times[index - 1] == time_us and self.ties[index - 1] > tie:
            index -= 1
        return index

    def add(self, time_us: int, trade_id: str, pnl: Decimal, outcome: int) -> None:
        units = self.units(pnl)
        tie = tie_break(trade_id)
        times = self.times
        index = len(times)
        # Most rows sort after the last one (a new resolution, or a rebuild
        # that reads in time order), and only the others need a search.
        if index and (time_us < times[-1] or (time_us == times[-1] and tie < self.ties[-1])):
            index = self._position(time_us, tie)
        if index == len(times):
            self.times.append(time_us)
            self.ties.append(tie)
            self.pnl.append(units)
            self.outcomes.append(outcome)
            self.cum_pnl.append(0)
            self.cum_gross_profit.append(0)
            self.cum_wins.append(0)
            self.cum_losses.append(0)
        else:
            self.times.insert(index, time_us)
            self.ties.insert(index, tie)
            self.pnl.insert(index, units)
            self.outcomes.insert(index, outcome)
            self.cum_pnl.insert(index, 0)
            self.cum_gross_profit.insert(index, 0)
            self.cum_wins.insert(index, 0)
            self.cum_losses.insert(index, 0)
        day = time_us // 86_400_000_000
        self.daily_pnl[day] = self.daily_pnl.get(day, 0) + units
        self._touch_day(day)
        self._invalidate(index)

    def remove(self, time_us: int, trade_id: str, pnl: Decimal, outcome: int) -> None:
        """Remove the row that ``add`` made from the same values; raises KeyError if absent."""
        units = self.units(pnl)
        tie = tie_break(trade_id)
        start = bisect_left(self.times, time_us)
        end = bisect_right(self.times, time_us)
        # Two ids with one CRC at one microsecond are distinguished by their values.
        for index in range(start, end):
            if (
                self.ties[index] == tie
                and self.pnl[index] == units
                and self.outcomes[index] == outcome
            ):
                break
        else:
            raise KeyError(trade_id)
        del self.times[index]
        del self.ties[index]
        self.pnl.pop(index)
        del self.outcomes[index]
        self.cum_pnl.pop(index)
        self.cum_gross_profit.pop(index)
        del self.cum_wins[index]
        del self.cum_losses[index]
        day = time_us // 86_400_000_000
        remaining = self.daily_pnl[day] - units
        if remaining == 0 and not self._day_has_rows(day):
            del self.daily_pnl[day]
        else:
            self.daily_pnl[day] = remaining
        self._touch_day(day)
        self._invalidate(index)

    def _day_has_rows(self, day: int) -> bool:
        start = bisect_left(self.times, day * 86_400_000_000)
        return start < len(self.times) and self.times[start] < (day + 1) * 86_400_000_000

    # ------------------------------------------------------------------
    # The scan

    def _ensure(self) -> tuple[Any, ...]:
        """Bring the prefix columns and the end state up to date; return the end state."""
        count = len(self.times)
        if self._valid == count and self._state_rows == count:
            return self._end_state
        if self._valid == self._state_rows:
            self._end_state = self._scan(self._valid, self._end_state)
        else:
            block = self._valid // self.checkpoint_every
            del self._checkpoints[block + 1 :]
            self._end_state = self._scan(block * self.checkpoint_every, self._checkpoints[block])
        self._valid = self._state_rows = count
        return self._end_state

    def _scan(self, start: int, state: tuple[Any, ...]) -> tuple[Any, ...]:
        (cum, gp, wins, losses, peak, peak_us,
         mdd, mdd_peak, mdd_peak_us, mdd_trough_us, mdd_recovered_us,
         pdd, pdd_peak, pdd_peak_us, pdd_trough_us, pdd_recovered_us,
         streak_sign, streak_len, max_win_streak, max_loss_streak,
         largest_win, largest_loss, pdd_amount) = state  # type: ignore[misc]
        base = to_units(self.starting_balance, self.scale)
        times, pnl, outcomes = self.times, self.pnl, self.outcomes
        cum_pnl, cum_gp = self.cum_pnl, self.cum_gross_profit
        cum_wins, cum_losses = self.cum_wins, self.cum_losses
        checkpoints = self._checkpoints
        every = self.checkpoint_every
        for index in range(start, len(times)):
            if index % every == 0 and index:
                checkpoint = (cum, gp, wins, losses, peak, peak_us,
                              mdd, mdd_peak, mdd_peak_us, mdd_trough_us, mdd_recovered_us,
                              pdd, pdd_peak, pdd_peak_us, pdd_trough_us, pdd_recovered_us,
                              streak_sign, streak_len, max_win_streak, max_loss_streak,
                              largest_win, largest_loss, pdd_amount)
                block = index // every
                if block < len(checkpoints):
                    checkpoints[block] = checkpoint
                else:
                    checkpoints.append(checkpoint)
            time_us = times[index]
            amount = pnl[index]
            outcome = outcomes[index]

            cum += amount
            if amount > 0:
                gp += amount
            if outcome == WIN:
                wins += 1
                if wins == 1 or amount > largest_win:
                    largest_win = amount
            elif outcome == LOSS:
                losses += 1
                if losses == 1 or amount < largest_loss:
                    largest_loss = amount
            cum_pnl.set(index, cum)
            cum_gp.set(index, gp)
            cum_wins[index] = wins
            cum_losses[index] = losses

            # A drawdown recovers when the curve regains the peak it fell from.
            if mdd_recovered_us is None and mdd > 0 and cum >= mdd_peak:
                mdd_recovered_us = time_us
            if pdd_recovered_us is None and pdd > 0 and cum >= pdd_peak:
                pdd_recovered_us = time_us
            if cum > peak:
                peak = cum
                peak_us = time_us
            else:
                drop = peak - cum
                if drop > mdd:
                    mdd, mdd_peak, mdd_peak_us = drop, peak, peak_us
                    mdd_trough_us, mdd_recovered_us = time_us, None
                if base > 0 and drop > 0:
                    # Relative to the balance at the peak: int / int rounds once.
                    percent = drop / (base + peak)
                    if percent > pdd:
                        pdd, pdd_peak, pdd_peak_us = percent, peak, peak_us
                        pdd_amount = drop
                        pdd_trough_us, pdd_recovered_us = time_us, None

            if outcome == streak_sign:
                streak_len += 1
            else:
                streak_sign, streak_len = outcome, 1
            if outcome == WIN and streak_len > max_win_streak:
                max_win_streak = streak_len
            elif outcome == LOSS and streak_len > max_loss_streak:
                max_loss_streak = streak_len
        return (cum, gp, wins, losses, peak, peak_us,
                mdd, mdd_peak, mdd_peak_us, mdd_trough_us, mdd_recovered_us,
                pdd, pdd_peak, pdd_peak_us, pdd_trough_us, pdd_recovered_us,
                streak_sign, streak_len, max_win_streak, max_loss_streak,
                largest_win, largest_loss, pdd_amount)

    # ------------------------------------------------------------------
    # Queries

    def amount(self, units: int) -> Decimal:
        return from_units(units, self.scale)

    def base_units(self) -> int:
        return to_units(self.starting_balance, self.scale)

    def max_drawdown(self) -> Drawdown:
        """Return the largest fall in currency from a running peak of cumulative PnL."""
        state = self._ensure()
        amount = state[_MDD]
        peak = state[_MDD_PEAK]
        assert isinstance(amount, int) and isinstance(peak, int)
        base = self.base_units()
        percent: float | None = None
        if base > 0:
            # A fraction of the balance at the peak: int / int rounds once.
            percent = amount / (base + peak)
        return Drawdown(amount, peak, state[_MDD_PEAK_US], state[_MDD_TROUGH_US],  # type: ignore[arg-type]
                        state[_MDD_RECOVERED_US], percent)  # type: ignore[arg-type]

    def max_drawdown_percent(self) -> Drawdown | None:
        """Return the largest fall relative to the balance at its peak, or None without a balance."""
        state = self._ensure()
        if self.base_units() <= 0:
            return None
        percent = state[_PDD]
        peak = state[_PDD_PEAK]
        assert isinstance(percent, float) and isinstance(peak, int)
        if percent <= 0:
            return Drawdown(0, peak, None, None, None, 0.0)
        return Drawdown(state[_PDD_AMOUNT], peak, state[_PDD_PEAK_US],  # type: ignore[arg-type]
                        state[_PDD_TROUGH_US], state[_PDD_RECOVERED_US], percent)  # type: ignore[arg-type]

    def end(self) -> tuple[int, int, int | None]:
        """Return cumulative PnL, its running peak and the time of that peak, after the last row."""
        state = self._ensure()
        return state[_CUM], state[_PEAK], state[_PEAK_US]  # type: ignore[return-value]

    def streaks(self) -> tuple[int, int, int, int]:
        """Return the longest winning and losing streaks and the current one (sign, length)."""
        state = self._ensure()
        return (state[_MAX_WIN_STREAK], state[_MAX_LOSS_STREAK],  # type: ignore[return-value]
                state[_STREAK_SIGN] or 0, state[_STREAK_LEN])

    def largest(self) -> tuple[int | None, int | None]:
        """Return the largest win and the largest loss (negative), None when there is none."""
        state = self._ensure()
        win = state[_LARGEST_WIN] if state[_WINS] else None
        loss = state[_LARGEST_LOSS] if state[_LOSSES] else None
        return win, loss  # type: ignore[return-value]

    def totals(self, start: int, end: int) -> RangeTotals:
        """Sum rows ``start`` to ``end`` (exclusive)."""
        self._ensure()
        if end <= start:
            return RangeTotals(0, 0, 0, 0, 0)
        last = end - 1
        if start == 0:
            return RangeTotals(end, self.cum_wins[last], self.cum_losses[last],
                               self.cum_pnl[last], self.cum_gross_profit[last])
        before = start - 1
        return RangeTotals(
            end - start,
            self.cum_wins[last] - self.cum_wins[before],
            self.cum_losses[last] - self.cum_losses[before],
            self.cum_pnl[last] - self.cum_pnl[before],
            self.cum_gross_profit[last] - self.cum_gross_profit[before],
        )

    def totals_between(self, start_us: int, end_us: int) -> RangeTotals:
        """Sum the rows resolved at or after ``start_us`` and before ``end_us``."""
        return self.totals(bisect_left(self.times, start_us), bisect_left(self.times, end_us))

    @property
    def first_us(self) -> int | None:
        return self.times[0] if self.times else None

    @property
    def last_us(self) -> int | None:
        return self.times[-1] if self.times else None
