"""Local time for reports: calendar rows and hour-of-day patterns in one IANA zone.

Times are stored in UTC. A day, week or month here is one of the configured
zone, so a day across a daylight-saving change lasts 23 or 25 hours; its
bounds come from ``zoneinfo``, never from a fixed offset.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from actors.analytics.series import RangeTotals, TradeSeries
from actors.analytics.values import Figures, money, ratio

# Rows of each calendar table in the document, newest last.
DAYS_SHOWN = 31
WEEKS_SHOWN = 13
MONTHS_SHOWN = 12

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Every offset change since 2000 happens on a quarter hour in UTC, so the
# offset is constant within each 15-minute block and can be cached by block.
_BLOCK_US = 15 * 60 * 1_000_000


class LocalClock:
    """Converts UTC epoch microseconds to the local calendar of ``zone``."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._offsets: dict[int, int] = {}
        self._midnights: dict[int, int] = {}
        # UTC needs no lookup at all.
        self._fixed_offset = 0 if zone.key in ("UTC", "Etc/UTC") else None

    def offset_us(self, time_us: int) -> int:
        if self._fixed_offset is not None:
            return self._fixed_offset
        block = time_us // _BLOCK_US
        offset = self._offsets.get(block)
        if offset is None:
            moment = datetime.fromtimestamp(block * _BLOCK_US / 1e6, UTC).astimezone(self.zone)
            delta = moment.utcoffset()
            assert delta is not None
            offset = self._offsets[block] = int(delta.total_seconds()) * 1_000_000 + delta.microseconds
        return offset

    def local_date(self, time_us: int) -> date:
        local_us = time_us + self.offset_us(time_us)
        return date(1970, 1, 1) + timedelta(microseconds=local_us - local_us % 86_400_000_000)

    def hour_and_weekday(self, time_us: int) -> tuple[int, int]:
        local_us = time_us + self.offset_us(time_us)
        day, rest = divmod(local_us, 86_400_000_000)
        # 1970-01-01 was a Thursday (weekday 3).
        return rest // 3_600_000_000, (day + 3) % 7

    def midnight_us(self, day: date) -> int:
        """Return the UTC time of the local start of ``day``."""
        ordinal = day.toordinal()
        value = self._midnights.get(ordinal)
        if value is None:
            local = datetime.combine(day, time(0), tzinfo=self.zone)
            value = self._midnights[ordinal] = round(local.timestamp() * 1_000_000)
        return value

    def format(self, time_us: int | None) -> str | None:
        if time_us is None:
            return None
        return datetime.fromtimestamp(time_us / 1e6, UTC).astimezone(self.zone).isoformat()


def totals_figures(totals: RangeTotals, series: TradeSeries, min_trades: int) -> dict[str, Any]:
    """Return the figures that the prefix sums give for a run of resolved trades."""
    figures = Figures()
    figures.set("resolved", totals.trades)
    figures.set("wins", totals.wins)
    figures.set("losses", totals.losses)
    figures.set("draws", totals.draws)
    decided = totals.wins + totals.losses
    if decided:
        figures.set("win_rate", round(totals.wins / decided, 6))
    else:
        figures.undefined("win_rate", "no_decided_trades")
    figures.set("realized_pnl", money(series.amount(totals.pnl)))
    if totals.gross_loss:
        figures.set("profit_factor", ratio(totals.gross_profit / totals.gross_loss))
    else:
        figures.undefined("profit_factor", "no_losing_trades" if totals.trades else "no_trades")
    figures.set("small_sample", totals.trades < min_trades)
    return figures.to_dict()


def _month_start(day: date, months_back: int) -> date:
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


class _Table:
    """One calendar table: its row ranges for the current last date, and the built rows."""

    __slots__ = ("ends", "rows", "starts")

    def __init__(self, starts: list[date], ends: list[date]) -> None:
        self.starts = starts
        self.ends = ends
        self.rows: list[dict[str, Any] | None] = [None] * len(starts)


class CalendarTables:
    """By day, week (starting Monday) and month, in local time, cached by row.

    A row is rebuilt only when a resolution on or after the UTC day that
    contains its end changed since the last snapshot, so a new trade rebuilds
    the latest day, week and month.
    """

    def __init__(self, series: TradeSeries, clock: LocalClock) -> None:
        self.series = series
        self.clock = clock
        self._tables: dict[str, _Table] = {}
        self._document: dict[str, list[dict[str, Any]]] | None = None
        self._last: date | None = None

    def _layout(self, last: date) -> None:
        days = [last - timedelta(days=back) for back in range(DAYS_SHOWN - 1, -1, -1)]
        monday = last - timedelta(days=last.weekday())
        weeks = [monday - timedelta(weeks=back) for back in range(WEEKS_SHOWN - 1, -1, -1)]
        # One more than shown: the start of the next month ends the last row.
        months = [_month_start(last, back) for back in range(MONTHS_SHOWN - 1, -2, -1)]
        self._tables = {
            "by_day": _Table(days, [day + timedelta(days=1) for day in days]),
            "by_week": _Table(weeks, [week + timedelta(weeks=1) for week in weeks]),
            "by_month": _Table(months[:-1], months[1:]),
        }
        self._last = last

    def to_dict(self, min_trades: int) -> dict[str, list[dict[str, Any]]]:
        series = self.series
        dirty_us = series.dirty_us
        series.dirty_us = None
        last_us = series.last_us
        if last_us is None:
            self._document = None
            return {"by_day": [], "by_week": [], "by_month": []}
        last = self.clock.local_date(last_us)
        if last != self._last:
            self._layout(last)
        elif self._document is not None and dirty_us is None:
            return self._document
        midnight = self.clock.midnight_us
        document: dict[str, list[dict[str, Any]]] = {}
        for name, table in self._tables.items():
            rows = table.rows
            # Rows are in time order: rebuild from the newest back to the
            # first one that ends before the earliest change.
            for index in range(len(rows) - 1, -1, -1):
                end_us = midnight(table.ends[index])
                if rows[index] is not None and dirty_us is not None and end_us <= dirty_us:
                    break
                if rows[index] is not None and dirty_us is None:
                    break
                start = table.starts[index]
                totals = series.totals_between(midnight(start), end_us)
                rows[index] = {"start": start.isoformat(), **totals_figures(totals, series, min_trades)}
            document[name] = [row for row in rows if row is not None and row["resolved"]]
        self._document = document
        return document
