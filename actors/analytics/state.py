"""``MetricsState``: every metric over all trades, kept up to date change by change.

The state never keeps trade records. A committed change arrives as the
trade's state before and after; the state takes the contribution of the
"before" out of every sum it touched and adds that of the "after". Figures
that depend on order (the equity curve, streaks, time windows) live in the
resolution-ordered ``TradeSeries``. A snapshot reads sums and cached rows,
so its cost does not grow with the number of trades.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from actors.analytics.calendar import WEEKDAYS, CalendarTables, LocalClock, totals_figures
from actors.analytics.forecast import ForecastStats
from actors.analytics.groups import GroupTable
from actors.analytics.returns import DailyReturns
from actors.analytics.series import LOSS, WIN, TradeSeries
from actors.analytics.settings import MetricsSettings
from actors.analytics.stats import ExecutionStats, Stats, TradeFacts
from actors.analytics.values import MONEY_CONTEXT, ZERO, Figures, money, ratio
from actors.messages import Decision
from actors.trades import TradeRecord, fills_from_text, position_of, record_position

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_HOUR_US = 3_600_000_000
WINDOWS = (("last_24h", 24 * _HOUR_US), ("last_7d", 7 * 24 * _HOUR_US), ("last_30d", 30 * 24 * _HOUR_US))
_BINARY_SIDES = {"yes": "no", "no": "yes"}


def epoch_us(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (value - _EPOCH) // _MICROSECOND


def facts_from_record(record: TradeRecord, tolerance: Decimal) -> TradeFacts:
    return TradeFacts(
        record.trade_id, record.status, record.strategy, record.venue, record.market,
        record.side, record.market_kind, record.signal_type, record.tags,
        record.size, record.entry_price, record.fees, record.exit_fees, record.pnl,
        record.outcome, record.probability, record.exit_price,
        epoch_us(record.opened_at), epoch_us(record.resolved_at), tolerance,
        record.mark_price, record.expected_price, record.requested_size,
        record_position(record) if record.fills else None,
    )


# Entries that a ``DecimalCache`` keeps at most, about 1 MB.
_DECIMAL_CACHE_SIZE = 4096


class DecimalCache(dict[str | None, Decimal | None]):
    """Decimals by their stored text, shared over the rows of one rebuild.

    Sizes, prices, fees and probabilities repeat a few values over many
    trades, and a Decimal is immutable, so one object can serve every row.
    A lookup takes about a tenth of the time of parsing the text (CPython
    3.11). Once full, the cache keeps the values it has, which the first
    rows found, and parses the others each time. ``None`` maps to ``None``.
    """

    __slots__ = ()

    def __missing__(self, text: str | None) -> Decimal | None:
        value = None if text is None else Decimal(text)
        if len(self) < _DECIMAL_CACHE_SIZE:
            self[text] = value
        return value


# Decoded tag lists by their stored JSON text: a history has few distinct ones.
_TAGS: dict[str, tuple[str, ...]] = {}


def _tags(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    tags = _TAGS.get(text)
    if tags is None:
        if len(_TAGS) > 10_000:
            _TAGS.clear()
        tags = _TAGS[text] = tuple(json.loads(text))
    return tags


def facts_from_row(
    row: tuple[Any, ...], tolerance: Decimal, decimals: DecimalCache | None = None
) -> TradeFacts:
    """Build facts from a row of ``store.LEAN_TRADE_COLUMNS``.

    A caller that reads many rows passes one ``decimals`` cache for all of them.
    """
    (trade_id, status, strategy, venue, market, side, market_kind, signal_type, tags,
     size, entry_price, fees, exit_fees, pnl, outcome, probability, exit_price,
     opened_us, resolved_us, mark_price, expected_price, requested_size, fills) = row
    number = DecimalCache() if decimals is None else decimals
    size_value, price_value = number[size], number[entry_price]
    fees_value = cast(Decimal, number[fees]) if fees else ZERO
    position = None
    if fills:
        position = position_of(side, size_value, price_value, fees_value, fills_from_text(fills))
    return TradeFacts(
        trade_id, status, strategy, venue, market, side, market_kind, signal_type,
        _tags(tags),
        size_value, price_value, fees_value,
        cast(Decimal, number[exit_fees]) if exit_fees else ZERO, number[pnl], outcome,
        number[probability], number[exit_price], opened_us, resolved_us, tolerance,
        number[mark_price], number[expected_price], number[requested_size], position,
    )


def _hold_amount(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


class _MarketOutcome:
    """The known result of one binary market and the bot's HOLDs on it."""

    __slots__ = ("settled", "holds", "priced", "missed_value")

    def __init__(self) -> None:
        # Settled trades that show each side winning: a share settled at 1
        # won, one settled at 0 lost.
        self.settled = {"yes": 0, "no": 0}
        self.holds = {"yes": 0, "no": 0}
        self.priced = {"yes": 0, "no": 0}
        # Sum of size * (1 - price) over priced HOLDs: what each would have
        # made had its side won.
        self.missed_value = {"yes": ZERO, "no": ZERO}

    def winner(self) -> str | None:
        yes, no = self.settled["yes"] > 0, self.settled["no"] > 0
        if yes == no:
            return None  # unknown, or settled trades contradict each other
        return "yes" if yes else "no"

    def contribution(self) -> tuple[int, int, int, Decimal]:
        """Return (scored holds, missed wins, priced missed wins, missed PnL)."""
        winner = self.winner()
        if winner is None:
            return 0, 0, 0, ZERO
        scored = self.holds["yes"] + self.holds["no"]
        return scored, self.holds[winner], self.priced[winner], self.missed_value[winner]


class MissedOpportunities:
    """HOLD decisions scored against the result of their market, kept as running sums."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.markets: dict[str, _MarketOutcome] = {}
        self.holds = 0
        self.unscorable = 0
        self.scored = 0
        self.missed = 0
        self.priced_missed = 0
        self.missed_pnl = ZERO
        self.overflowed = False

    def _market(self, market: str) -> _MarketOutcome | None:
        entry = self.markets.get(market)
        if entry is None:
            if len(self.markets) >= self.cap:
                self.overflowed = True
                return None
            entry = self.markets[market] = _MarketOutcome()
        return entry

    def _change(self, entry: _MarketOutcome, sign: int) -> None:
        scored, missed, priced, value = entry.contribution()
        self.scored += sign * scored
        self.missed += sign * missed
        self.priced_missed += sign * priced
        self.missed_pnl = MONEY_CONTEXT.add(self.missed_pnl, value if sign > 0 else -value)

    def add_hold(self, market: str, side: str | None, price: Any, size: Any) -> None:
        self.holds += 1
        entry = self._market(market) if side in _BINARY_SIDES else None
        if entry is None or side is None:
            self.unscorable += 1
            return
        self._change(entry, -1)
        entry.holds[side] += 1
        price_value, size_value = _hold_amount(price), _hold_amount(size)
        if price_value is not None and size_value is not None and 0 <= price_value <= 1:
            entry.priced[side] += 1
            value = MONEY_CONTEXT.multiply(size_value, 1 - price_value)
            entry.missed_value[side] = MONEY_CONTEXT.add(entry.missed_value[side], value)
        self._change(entry, 1)

    def add_settlement(self, facts: TradeFacts, sign: int) -> None:
        if facts.market_kind != "binary" or facts.side not in _BINARY_SIDES or facts.exit_price is None:
            return
        if facts.exit_price == 1:
            winner = facts.side
        elif facts.exit_price == 0:
            winner = _BINARY_SIDES[facts.side]
        else:
            return  # sold before settlement, which shows nothing of the result
        entry = self._market(facts.market)
        if entry is None:
            return
        if not (entry.holds["yes"] or entry.holds["no"]):
            # Without HOLDs the market contributes nothing, before or after.
            entry.settled[winner] += sign
            return
        self._change(entry, -1)
        entry.settled[winner] += sign
        self._change(entry, 1)

    def to_dict(self, min_trades: int) -> dict[str, Any]:
        figures = Figures()
        figures.set("holds", self.holds)
        figures.set("scored_holds", self.scored)
        figures.set("missed_wins", self.missed)
        if self.scored:
            figures.set("regret_rate", ratio(self.missed / self.scored))
        else:
            figures.undefined("regret_rate", "no_scored_holds")
        if self.missed and self.priced_missed == self.missed:
            figures.set("missed_pnl", money(self.missed_pnl))
        elif self.missed:
            figures.undefined("missed_pnl", "holds_without_price")
        else:
            figures.set("missed_pnl", 0.0)
        figures.set("markets_over_cap", self.overflowed)
        figures.set("small_sample", self.scored < min_trades)
        return figures.to_dict()


class MetricsState:
    """Incremental metrics over every trade and decision seen."""

    def __init__(self, settings: MetricsSettings | None = None) -> None:
        self.settings = settings = settings or MetricsSettings.from_config()
        self.total = Stats()
        self.by_strategy = GroupTable()
        self.by_venue = GroupTable()
        self.by_signal = GroupTable()
        self.by_tag = GroupTable(cap=settings.max_markets, shown=settings.top_rows, brief=True)
        self.by_market = GroupTable(cap=settings.max_markets, shown=settings.top_rows, brief=True)
        self.by_hour = [Stats() for _ in range(24)]
        self.by_weekday = [Stats() for _ in range(7)]
        self.forecast = ForecastStats()
        self.execution = ExecutionStats()
        self.missed = MissedOpportunities(settings.max_markets)
        self.series = TradeSeries(settings.starting_balance)
        self.returns = DailyReturns(
            self.series, settings.periods_per_year, settings.risk_free_per_period
        )
        self.clock = LocalClock(settings.zone)
        self.calendar = CalendarTables(self.series, self.clock)
        self.decisions = {"trade": 0, "hold": 0}
        self.trades_seen = 0
        self._total_document: dict[str, Any] | None = None
        self._pattern_documents: dict[tuple[str, int], dict[str, Any]] = {}
        self._patterns_document: dict[str, Any] | None = None

    # ------------------------------------------------------------------
    # Changes

    def add_facts(self, facts: TradeFacts, sign: int) -> None:
        """Add one trade state's contribution to every sum (``sign`` 1) or take it out (-1)."""
        self.total.add(facts, sign)
        self._total_document = None
        self.execution.add(facts, sign)
        self.by_strategy.add(facts.strategy, facts, sign)
        self.by_venue.add(facts.venue, facts, sign)
        if facts.signal_type is not None:
            self.by_signal.add(facts.signal_type, facts, sign)
        for tag in facts.tags:
            self.by_tag.add(tag, facts, sign)
        self.by_market.add(facts.market, facts, sign)
        if facts.opened_us is not None:
            hour, weekday = self.clock.hour_and_weekday(facts.opened_us)
            self.by_hour[hour].add(facts, sign)
            self.by_weekday[weekday].add(facts, sign)
            self._pattern_documents.pop(("hour", hour), None)
            self._pattern_documents.pop(("weekday", weekday), None)
            self._patterns_document = None
        if facts.status == "resolved":
            assert facts.pnl is not None and facts.outcome is not None
            if facts.resolved_us is not None:
                if sign > 0:
                    self.series.add(facts.resolved_us, facts.trade_id, facts.pnl, facts.outcome)
                else:
                    self.series.remove(facts.resolved_us, facts.trade_id, facts.pnl, facts.outcome)
            self.forecast.add(facts, sign)
            self.missed.add_settlement(facts, sign)

    def start_bulk(self) -> Bulk:
        """Return a loader that adds many new trades faster than ``add_facts``, for a rebuild."""
        return Bulk(self)

    def apply_change(self, before: TradeRecord | None, after: TradeRecord) -> bool:
        """Apply one committed change; return True if the state changed."""
        if before == after:
            return False
        tolerance = self.settings.break_even_tolerance
        if before is not None:
            self.add_facts(facts_from_record(before, tolerance), -1)
        else:
            self.trades_seen += 1
        self.add_facts(facts_from_record(after, tolerance), 1)
        return True

    def apply_decision(self, decision: Decision) -> None:
        self.decisions[decision.action] = self.decisions.get(decision.action, 0) + 1
        if decision.action == "hold":
            params = decision.params
            self.missed.add_hold(decision.market, decision.side, params.get("price"), params.get("size"))

    # ------------------------------------------------------------------
    # The document

    def snapshot(self) -> dict[str, Any]:
        """Build the JSON document that the feed, ``report --json`` and tests share."""
        settings = self.settings
        min_trades = settings.min_trades
        if self._total_document is None:
            self._total_document = self.total.to_dict(min_trades)
        document: dict[str, Any] = {
            "type": "metrics",
            "generated_at": datetime.now(UTC).astimezone(settings.zone).isoformat(),
            **self._total_document,
        }
        equity = self._equity()
        document["max_drawdown"] = equity["max_drawdown"]["amount"]
        largest_win, largest_loss = self.series.largest()
        document["largest_win"] = None if largest_win is None else money(self.series.amount(largest_win))
        document["largest_loss"] = None if largest_loss is None else money(self.series.amount(largest_loss))
        if largest_win is None or largest_loss is None:
            # A copy: the cached totals document keeps its own reasons.
            reasons = dict(document.get("undefined", {}))
            if largest_win is None:
                reasons["largest_win"] = "no_winning_trades"
            if largest_loss is None:
                reasons["largest_loss"] = "no_losing_trades"
            document["undefined"] = reasons
        longest_win, longest_loss, current_sign, current_length = self.series.streaks()
        document["streaks"] = {
            "longest_winning": longest_win,
            "longest_losing": longest_loss,
            "current": {
                "kind": {WIN: "winning", LOSS: "losing"}.get(current_sign, "draw") if len(self.series) else None,
                "length": current_length if len(self.series) else 0,
            },
        }
        document["equity"] = equity
        document["returns"] = self.returns.to_dict(settings.min_days)
        document["forecast"] = self.forecast.to_dict(min_trades)
        document["execution"] = self._execution()
        document["missed_opportunities"] = self.missed.to_dict(min_trades)
        document["windows"] = self._windows()
        document["calendar"] = {"timezone": settings.zone.key, **self.calendar.to_dict(min_trades)}
        document["patterns"] = self._patterns()
        document["decisions"] = dict(self.decisions)
        document["by_strategy"] = self.by_strategy.to_dict(min_trades)
        document["by_venue"] = self.by_venue.to_dict(min_trades)
        document["by_signal_type"] = self.by_signal.to_dict(min_trades)
        document["by_tag"] = self.by_tag.to_dict(min_trades)
        document["by_market"] = self.by_market.to_dict(min_trades)
        document["markets_tracked"] = len(self.by_market.rows)
        document["markets_over_cap"] = self.by_market.overflowed
        document["settings"] = {
            "starting_balance": money(settings.starting_balance),
            "periods_per_year": settings.periods_per_year,
            "risk_free_rate": settings.risk_free_rate,
            "break_even_tolerance": money(settings.break_even_tolerance),
            "timezone": settings.zone.key,
            "min_trades": settings.min_trades,
            "min_days": settings.min_days,
        }
        return document

    def _equity(self) -> dict[str, Any]:
        series = self.series
        clock = self.clock
        cumulative, peak, peak_us = series.end()
        base = series.base_units()
        figures = Figures()
        figures.set("starting_balance", money(self.settings.starting_balance))
        figures.set("current", money(series.amount(base + cumulative)))
        # Open positions at the price the bot last reported for them.
        unrealized = self.total.unrealized
        figures.set("unrealized_pnl", money(unrealized))
        # What partial exits realized on positions still open; their trades'
        # PnL enters the curve when they resolve.
        open_realized = self.total.open_realized
        figures.set("open_realized_pnl", money(open_realized))
        marked = MONEY_CONTEXT.add(
            series.amount(base + cumulative), MONEY_CONTEXT.add(unrealized, open_realized)
        )
        figures.set("current_marked", money(marked))
        marked_drop = MONEY_CONTEXT.subtract(series.amount(base + peak), marked)
        figures.set("current_drawdown_marked", money(max(ZERO, marked_drop)))
        figures.set("peak", money(series.amount(base + peak)))
        figures.set("peak_at", clock.format(peak_us))
        drop = peak - cumulative
        figures.set("current_drawdown", money(series.amount(drop)))
        if base > 0:
            figures.set("current_drawdown_percent", ratio(drop / (base + peak), 9))
        else:
            figures.undefined("current_drawdown_percent", "no_starting_balance")

        largest = series.max_drawdown()
        last_us = series.last_us
        figures.set("max_drawdown", self._drawdown_dict(largest, last_us))
        by_percent = series.max_drawdown_percent()
        if by_percent is None:
            figures.undefined("max_drawdown_percent", "no_starting_balance")
        else:
            figures.set("max_drawdown_percent", self._drawdown_dict(by_percent, last_us))
        figures.set("small_sample", self.total.resolved < self.settings.min_trades)
        return figures.to_dict()

    def _drawdown_dict(self, drawdown: Any, last_us: int | None) -> dict[str, Any]:
        clock = self.clock
        figures = Figures()
        figures.set("amount", money(self.series.amount(drawdown.amount)))
        if drawdown.percent is None:
            figures.undefined("percent", "no_starting_balance")
        else:
            figures.set("percent", ratio(drawdown.percent, 9))
        figures.set("peak_at", clock.format(drawdown.peak_us))
        figures.set("trough_at", clock.format(drawdown.trough_us))
        figures.set("recovered_at", clock.format(drawdown.recovered_us))
        if drawdown.amount and drawdown.peak_us is not None:
            # An unrecovered drawdown lasts up to the latest resolution.
            end_us = drawdown.recovered_us if drawdown.recovered_us is not None else last_us
            figures.set("duration_seconds", round((end_us - drawdown.peak_us) / 1e6, 3))
        elif drawdown.amount:
            figures.undefined("duration_seconds", "peak_is_start")
        else:
            figures.set("duration_seconds", 0.0)
        return figures.to_dict()

    def _execution(self) -> dict[str, Any]:
        total = self.total
        figures = Figures()
        filled = total.open + total.resolved
        figures.set("filled", filled)
        figures.set("cancelled", total.cancelled)
        if filled + total.cancelled:
            figures.set("fill_rate", ratio(filled / (filled + total.cancelled)))
        else:
            figures.undefined("fill_rate", "no_trades")
        self.execution.figures(figures.values, figures.reasons)
        # Small when any ratio here rests on fewer than min_trades trades. The
        # fill rate rests on all trades, the slippage on those with an expected
        # price and the size fill rate on those with a requested size.
        min_trades = self.settings.min_trades
        partial_counts = (self.execution.slipped, self.execution.sized)
        small = any(0 < count < min_trades for count in partial_counts)
        figures.set("small_sample", filled + total.cancelled < min_trades or small)
        return figures.to_dict()

    def _windows(self) -> dict[str, Any]:
        series = self.series
        min_trades = self.settings.min_trades
        count = len(series)
        windows: dict[str, Any] = {}
        size = self.settings.rolling_trades
        windows[f"last_{size}_trades"] = totals_figures(series.totals(max(0, count - size), count), series, min_trades)
        last_us = series.last_us
        windows["end"] = self.clock.format(last_us)
        for name, length in WINDOWS:
            if last_us is None:
                totals = series.totals(0, 0)
            else:
                # Windows end at the latest resolution, so that a report on
                # an old log is the same whenever it runs.
                totals = series.totals_between(last_us - length + 1, last_us + 1)
            windows[name] = totals_figures(totals, series, min_trades)
        return windows

    def _patterns(self) -> dict[str, Any]:
        if self._patterns_document is not None:
            return self._patterns_document
        min_trades = self.settings.min_trades
        by_hour = []
        for hour, stats in enumerate(self.by_hour):
            if stats.empty:
                continue
            document = self._pattern_documents.get(("hour", hour))
            if document is None:
                document = {"hour": hour, **stats.to_dict(min_trades, brief=True)}
                self._pattern_documents[("hour", hour)] = document
            by_hour.append(document)
        by_weekday = []
        for weekday, stats in enumerate(self.by_weekday):
            if stats.empty:
                continue
            document = self._pattern_documents.get(("weekday", weekday))
            if document is None:
                document = {"weekday": WEEKDAYS[weekday], **stats.to_dict(min_trades, brief=True)}
                self._pattern_documents[("weekday", weekday)] = document
            by_weekday.append(document)
        self._patterns_document = {
            "timezone": self.settings.zone.key, "by_hour": by_hour, "by_weekday": by_weekday
        }
        return self._patterns_document


class Bulk:
    """Adds trades to an empty state through a few fine-grained cells, then rolls them up.

    A rebuild adds every stored trade once. Instead of the eight group sums
    that ``add_facts`` updates per trade, it updates one cell per
    (strategy, venue, signal type, tags), one per market and one per
    (hour, weekday), and ``finish`` merges the cells into the groups. Sums
    are exact, so the result equals adding the trades one by one, which the
    tests check. Markets are merged in the order of their first trade, so
    that the cap on market rows keeps the same markets.
    """

    def __init__(self, state: MetricsState) -> None:
        self.state = state
        self.cells: dict[tuple[str, str, str | None, tuple[str, ...]], Stats] = {}
        self.markets: dict[str, Stats] = {}
        self.patterns = [Stats() for _ in range(24 * 7)]
        for table in (state.by_tag, state.by_market):
            table.ranking = False

    def add(self, facts: TradeFacts) -> None:
        state = self.state
        key = (facts.strategy, facts.venue, facts.signal_type, facts.tags)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Stats()
        cell.add(facts, 1)
        state.execution.add(facts, 1)
        market = self.markets.get(facts.market)
        if market is None:
            market = self.markets[facts.market] = Stats()
        market.add(facts, 1)
        if facts.opened_us is not None:
            hour, weekday = state.clock.hour_and_weekday(facts.opened_us)
            self.patterns[weekday * 24 + hour].add(facts, 1)
        if facts.status == "resolved":
            assert facts.pnl is not None and facts.outcome is not None
            if facts.resolved_us is not None:
                state.series.add(facts.resolved_us, facts.trade_id, facts.pnl, facts.outcome)
            state.forecast.add(facts, 1)
            state.missed.add_settlement(facts, 1)
        state.trades_seen += 1

    def finish(self) -> None:
        state = self.state
        for (strategy, venue, signal_type, tags), cell in self.cells.items():
            state.total.merge(cell)
            state.by_strategy.merge(strategy, cell)
            state.by_venue.merge(venue, cell)
            if signal_type is not None:
                state.by_signal.merge(signal_type, cell)
            for tag in tags:
                state.by_tag.merge(tag, cell)
        for market, cell in self.markets.items():
            state.by_market.merge(market, cell)
        for index, cell in enumerate(self.patterns):
            weekday, hour = divmod(index, 24)
            state.by_hour[hour].merge(cell)
            state.by_weekday[weekday].merge(cell)
        for table in (state.by_tag, state.by_market):
            table.ranking = True
        state._total_document = None
        state._patterns_document = None
        state._pattern_documents.clear()
