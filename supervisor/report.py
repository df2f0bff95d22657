"""``tradepulse report``: the metrics recomputed from the database.

``--json`` prints the document that the metrics actor publishes on the feed;
without it the same document is rendered as plain-text tables. A value from
fewer trades or days than the configured minimum is marked with ``*``, and
an undefined value reads "n/a" with its reason below the table.

``--trades N`` adds the latest N trades with each one's PnL, capital at risk,
return on it and holding time, under "trades" in the JSON document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from actors.analytics.calendar import LocalClock
from actors.analytics.series import DRAW, LOSS, WIN
from actors.analytics.settings import MetricsSettings
from actors.analytics.state import facts_from_row
from actors.analytics.values import Figures, from_fixed, money, ratio
from actors.messages import dumps
from actors.metrics import restore_state_sync
from actors.store import DatabaseError, LatestTrade, read_latest_trades_sync
from supervisor.config import Config


def build_report(config: Config, *, trades: int | None = None) -> dict[str, Any]:
    """Return the metrics document for every stored trade, archived ones included.

    With ``trades``, the document also lists that many of the latest trades
    under "trades" (see ``trade_row``).
    """
    settings = MetricsSettings.from_config(config.metrics)
    database = config.service.database_path
    archive = config.service.archive_path
    if not database.exists():
        raise DatabaseError(
            f"no database at {database}; start the service with 'tradepulse run' "
            "or import a log with 'tradepulse replay FILE' first"
        )
    if trades is None:
        return restore_state_sync(database, archive, settings).state.snapshot()

    # The trades are read before and, when the logger committed meanwhile,
    # again after the metrics, so that both show the same commit.
    latest = read_latest_trades_sync(database, archive, trades)
    # A checkpoint that the service left at the latest commit spares the rebuild.
    restored = restore_state_sync(database, archive, settings)
    seq, state = restored.seq, restored.state
    if latest.seq != seq:
        # NOTE: a commit between the rebuild and this read still makes the
        # table one commit newer than the metrics.
        latest = read_latest_trades_sync(database, archive, trades)
    document = state.snapshot()
    document["trades"] = [trade_row(trade, settings, state.clock) for trade in latest.trades]
    return document


_OUTCOME_NAMES = {WIN: "win", LOSS: "loss", DRAW: "draw"}

# The reason codes of the values that need a trade's end, by the status of
# a trade that has none.
_UNFINISHED_REASONS = {"open": "still_open", "cancelled": "cancelled"}


def trade_row(trade: LatestTrade, settings: MetricsSettings, clock: LocalClock) -> dict[str, Any]:
    """Return one trade's values, each undefined one null with its reason under "undefined".

    The values come from the ``TradeFacts`` that the metrics add up, so the
    mean of "return_on_risk" over resolved trades is ``expectancy_r`` and that
    of "holding_seconds" is ``average_holding_seconds``.
    """
    facts = facts_from_row(trade.row, settings.break_even_tolerance)
    figures = Figures()
    figures.set("trade_id", facts.trade_id)
    figures.set("status", facts.status)
    figures.set("outcome", None if facts.outcome is None else _OUTCOME_NAMES[facts.outcome])
    figures.set("strategy", facts.strategy)
    figures.set("venue", facts.venue)
    figures.set("market", facts.market)
    figures.set("side", facts.side)
    figures.set("archived", trade.archived)
    figures.maybe("opened_at", clock.format(facts.opened_us), "no_opening_time")
    figures.maybe("ended_at", clock.format(trade.ended_us), "still_open")
    unfinished = _UNFINISHED_REASONS.get(facts.status)
    if unfinished is None:
        figures.set("pnl", money(facts.pnl))
    else:
        figures.undefined("pnl", unfinished)
    figures.set("fees", money(facts.fees))
    figures.maybe("risk", money(facts.risk), "no_entry_price")
    if facts.status == "open":
        # What an open position has made so far: its partial exits, and the
        # rest at the latest mark.
        figures.set("open_realized_pnl", money(facts.open_realized))
        figures.maybe("unrealized_pnl", money(facts.unrealized), "no_mark")

    if unfinished is not None:
        figures.undefined("return_on_risk", unfinished)
    elif facts.risk is None:
        figures.undefined("return_on_risk", "no_entry_price")
    elif facts.r_fixed is None:
        figures.undefined("return_on_risk", "zero_risk")
    else:
        # The same fixed-point value that expectancy_r sums.
        figures.set("return_on_risk", ratio(from_fixed(facts.r_fixed)))

    if unfinished is not None:
        figures.undefined("holding_seconds", unfinished)
    elif facts.hold_us is None:
        figures.undefined("holding_seconds", "no_opening_time")
    else:
        figures.set("holding_seconds", round(facts.hold_us / 1e6, 3))
    return figures.to_dict()


# ---------------------------------------------------------------------------
# Cell formats. Each takes a value that is not None.

Format = Callable[[Any], str]


def _count(value: Any) -> str:
    return f"{value:,}"


def _money(value: Any) -> str:
    return f"{value:,.2f}"


def _percent(value: Any) -> str:
    return f"{value:.2%}"


def _ratio(value: Any) -> str:
    return f"{value:.3f}"


def _seconds(value: Any) -> str:
    hours, rest = divmod(int(value), 3600)
    days, hours = divmod(hours, 24)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {int(value) % 60:02d}s"


def _text(value: Any) -> str:
    return str(value)


def _reason(code: str) -> str:
    return code.replace("_", " ")


class _Notes:
    """Footnotes for the undefined values of one table, numbered by first use."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def cell(
        self, section: dict[str, Any], key: str, label: str, fmt: Format, *, small: bool | None = None
    ) -> str:
        """Format ``section[key]``, marked ``*`` when ``small`` (default: the section's flag)."""
        value = section.get(key)
        if value is None:
            reason = section.get("undefined", {}).get(key)
            if reason is None:
                return "n/a"
            line = f"{label}: {_reason(reason)}"
            if line not in self.lines:
                self.lines.append(line)
            return f"n/a[{self.lines.index(line) + 1}]"
        text = fmt(value)
        if small is None:
            small = bool(section.get("small_sample")) and key != "resolved"
        if small:
            text += "*"
        return text


def _render(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> list[str]:
    """Lay out a table: the first ``left`` columns aligned left, the others right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [c.ljust(w) for c, w in zip(row[:left], widths[:left])]
        cells += [c.rjust(w) for c, w in zip(row[left:], widths[left:])]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _with_notes(lines: list[str], notes: _Notes) -> list[str]:
    return lines + [f"  [{number}] {line}" for number, line in enumerate(notes.lines, start=1)]


# ---------------------------------------------------------------------------
# Tables

_SUMMARY_ROWS: tuple[tuple[str, str, Format], ...] = (
    ("open", "Open trades", _count),
    ("resolved", "Resolved trades", _count),
    ("cancelled", "Cancelled trades", _count),
    ("wins", "Wins", _count),
    ("losses", "Losses", _count),
    ("draws", "Draws", _count),
    ("win_rate", "Win rate", _percent),
    ("realized_pnl", "Realized PnL", _money),
    ("gross_profit", "Gross profit", _money),
    ("gross_loss", "Gross loss", _money),
    ("profit_factor", "Profit factor", _ratio),
    ("expectancy", "Expectancy", _money),
    ("expectancy_r", "Expectancy (R)", _ratio),
    ("average_win", "Average win", _money),
    ("average_loss", "Average loss", _money),
    ("payoff_ratio", "Payoff ratio", _ratio),
    ("fees", "Fees", _money),
    ("average_holding_seconds", "Average holding time", _seconds),
    ("open_exposure", "Open exposure", _money),
)


def _summary(document: dict[str, Any]) -> list[str]:
    columns = [("all", document)] + list(document["by_strategy"].items())
    notes = _Notes()
    rows = []
    for key, label, fmt in _SUMMARY_ROWS:
        rows.append([label] + [notes.cell(figures, key, label, fmt) for _, figures in columns])
    blank = [""] * (len(columns) - 1)
    rows.append(["Max drawdown", notes.cell(document, "max_drawdown", "Max drawdown", _money), *blank])
    for key, label in (("largest_win", "Largest win"), ("largest_loss", "Largest loss")):
        rows.append([label, notes.cell(document, key, label, _money), *blank])
    decisions = document["decisions"]
    rows.append(
        ["Decisions (trade/hold)", f"{decisions.get('trade', 0)}/{decisions.get('hold', 0)}", *blank]
    )
    header = ["metric"] + [name for name, _ in columns]
    return _with_notes(_render(header, rows), notes)


def _equity(document: dict[str, Any]) -> list[str]:
    equity = document["equity"]
    streaks = document["streaks"]
    notes = _Notes()
    # Balances and sums are exact whatever the sample, so only the drawdowns,
    # which describe how the strategy behaves, are marked for a small sample.
    small = bool(equity.get("small_sample"))
    rows = [
        ["Starting balance", notes.cell(equity, "starting_balance", "Starting balance", _money, small=False)],
        ["Current equity", notes.cell(equity, "current", "Current equity", _money, small=False)],
        ["Peak equity", notes.cell(equity, "peak", "Peak equity", _money, small=False)],
        ["Current drawdown", notes.cell(equity, "current_drawdown", "Current drawdown", _money)],
        ["Current drawdown %", notes.cell(equity, "current_drawdown_percent", "Current drawdown %", _percent)],
        ["Unrealized PnL (marked)", notes.cell(equity, "unrealized_pnl", "Unrealized PnL", _money, small=False)],
        [
            "Realized by partial exits, still open",
            notes.cell(equity, "open_realized_pnl", "Realized by partial exits", _money, small=False),
        ],
        [
            "Current equity, marked",
            notes.cell(equity, "current_marked", "Current equity, marked", _money, small=False),
        ],
        ["Current drawdown, marked", notes.cell(equity, "current_drawdown_marked", "Current drawdown, marked", _money)],
    ]
    drawdowns = (
        ("max_drawdown", "Max drawdown by amount"),
        ("max_drawdown_percent", "Max drawdown by fraction, amount"),
    )
    for key, label in drawdowns:
        drawdown = equity.get(key)
        if drawdown is None:
            rows.append([label, notes.cell(equity, key, label, _text)])
            continue
        rows.append([label, notes.cell(drawdown, "amount", label, _money, small=small)])
        rows.append(
            ["  of peak equity", notes.cell(drawdown, "percent", f"{label} of peak", _percent, small=small)]
        )
        rows.append(["  peak at", drawdown.get("peak_at") or "start"])
        rows.append(["  trough at", drawdown.get("trough_at") or "n/a"])
        rows.append(["  recovered at", drawdown.get("recovered_at") or "not yet"])
        duration = notes.cell(drawdown, "duration_seconds", f"{label} duration", _seconds, small=small)
        rows.append(["  duration", duration])
    current = streaks["current"]
    rows.append(["Longest winning streak", _count(streaks["longest_winning"])])
    rows.append(["Longest losing streak", _count(streaks["longest_losing"])])
    rows.append(["Current streak", f"{current['length']} {current['kind']}" if current["kind"] else "none"])
    return _with_notes(_render(["equity and risk", "value"], rows), notes)


_RETURN_ROWS: tuple[tuple[str, str, Format], ...] = (
    ("total_return", "Total return", _percent),
    ("cagr", "CAGR", _percent),
    ("volatility", "Volatility (annualized)", _percent),
    ("sharpe", "Sharpe ratio", _ratio),
    ("sortino", "Sortino ratio", _ratio),
    ("calmar", "Calmar ratio", _ratio),
    ("max_drawdown", "Max drawdown (daily)", _percent),
)


def _returns(document: dict[str, Any]) -> list[str]:
    returns = document["returns"]
    notes = _Notes()
    rows = [["Days", _count(returns.get("days", 0))]]
    rows += [[label, notes.cell(returns, key, label, fmt)] for key, label, fmt in _RETURN_ROWS]
    title = f"daily returns (UTC, {returns.get('periods_per_year', '?')} per year)"
    return _with_notes(_render([title, "value"], rows), notes)


_BRIEF_COLUMNS: tuple[tuple[str, str, Format], ...] = (
    ("resolved", "resolved", _count),
    ("wins", "wins", _count),
    ("losses", "losses", _count),
    ("win_rate", "win rate", _percent),
    ("realized_pnl", "PnL", _money),
    ("profit_factor", "PF", _ratio),
)


def _brief_table(title: str, rows: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    notes = _Notes()
    body = []
    for name, figures in rows:
        body.append([name] + [notes.cell(figures, key, label, fmt) for key, label, fmt in _BRIEF_COLUMNS])
    if not body:
        return [f"{title}: none"]
    header = [title] + [label for _, label, _ in _BRIEF_COLUMNS]
    return _with_notes(_render(header, body), notes)


def _forecast(document: dict[str, Any]) -> list[str]:
    forecast = document["forecast"]
    notes = _Notes()
    rows = [
        ["Scored trades", _count(forecast["scored_trades"])],
        ["Brier score", notes.cell(forecast, "brier_score", "Brier score", lambda v: f"{v:.4f}")],
        ["Log loss", notes.cell(forecast, "log_loss", "Log loss", lambda v: f"{v:.4f}")],
    ]
    lines = _with_notes(_render(["forecast quality", "value"], rows), notes)
    buckets = forecast.get("calibration") or []
    if buckets:
        body = []
        for bucket in buckets:
            mark = "*" if bucket.get("small_sample") else ""
            body.append(
                [
                    f"{bucket['low']:.1f}-{bucket['high']:.1f}",
                    _count(bucket["trades"]),
                    _percent(bucket["mean_probability"]) + mark,
                    _percent(bucket["win_rate"]) + mark,
                ]
            )
        lines += [""] + _render(["probability", "trades", "mean forecast", "win rate"], body)
    return lines


def _decisions(document: dict[str, Any]) -> list[str]:
    missed = document["missed_opportunities"]
    execution = document["execution"]
    notes = _Notes()
    rows = [
        ["HOLD decisions", _count(missed["holds"])],
        ["HOLDs on a resolved market", _count(missed["scored_holds"])],
        ["Missed wins", _count(missed["missed_wins"])],
        ["Regret rate", notes.cell(missed, "regret_rate", "Regret rate", _percent)],
        ["Missed PnL", notes.cell(missed, "missed_pnl", "Missed PnL", _money)],
        ["Fill rate (trades)", notes.cell(execution, "fill_rate", "Fill rate", _percent)],
        ["Fill rate (size)", notes.cell(execution, "size_fill_rate", "Fill rate by size", _percent)],
        ["Slippage", notes.cell(execution, "slippage", "Slippage", _money)],
        ["Average slippage (bp)", notes.cell(execution, "average_slippage_bps", "Average slippage", _ratio)],
    ]
    return _with_notes(_render(["decisions and execution", "value"], rows), notes)


# Widths beyond which a text cell of the trades table is shortened in the
# middle. That keeps most of a question's start and its last word, and
# both a ticker's series prefix and its date suffix.
_TRADE_ID_WIDTH = 32
_STRATEGY_WIDTH = 16
_MARKET_WIDTH = 28


def _shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    tail = (width - 3) // 3
    return text[: width - 3 - tail] + "..." + text[len(text) - tail :]


def _local_minute(value: Any) -> str:
    return datetime.fromisoformat(value).isoformat(sep=" ", timespec="minutes")


def _trades(document: dict[str, Any]) -> list[str]:
    """Render the "trades" rows, oldest first.

    The values that an open or cancelled trade lacks read "-", because the
    result column shows its status. Other undefined values read "n/a" with
    their reason below the table.
    """
    trades = document["trades"]
    if not trades:
        return ["latest trades: none"]
    notes = _Notes()
    body = []
    for row in trades:
        finished = row["status"] == "resolved"
        cells = [
            _shorten(row["trade_id"], _TRADE_ID_WIDTH),
            _shorten(row["strategy"], _STRATEGY_WIDTH),
            _shorten(row["market"], _MARKET_WIDTH),
            row["outcome"] if finished else row["status"],
            notes.cell(row, "pnl", "PnL", _money) if finished else "-",
            notes.cell(row, "risk", "At risk", _money),
            notes.cell(row, "return_on_risk", "Return", _percent) if finished else "-",
            notes.cell(row, "holding_seconds", "Held", _seconds) if finished else "-",
            "-" if row["ended_at"] is None else _local_minute(row["ended_at"]),
        ]
        body.append(cells)
    zone = document["settings"]["timezone"]
    header = ["trade", "strategy", "market", "result", "PnL", "at risk", "return", "held", f"ended ({zone})"]
    title = f"latest {len(trades)} trades by end time, oldest first (open ones by opening time)"
    return [title, *_with_notes(_render(header, body, left=4), notes)]


def format_report(document: dict[str, Any]) -> str:
    """Render the metrics document as plain-text tables."""
    sections: list[list[str]] = [_summary(document), _equity(document), _returns(document)]
    windows = document["windows"]
    sections.append(
        _brief_table(
            f"windows (up to {windows.get('end') or 'n/a'})",
            [(name.replace("_", " "), figures) for name, figures in windows.items() if name != "end"],
        )
    )
    calendar = document["calendar"]
    zone = calendar["timezone"]
    for key, title in (("by_month", "month"), ("by_week", "week from"), ("by_day", "day")):
        rows = [(row["start"], row) for row in calendar[key]]
        sections.append(_brief_table(f"{title} ({zone})", rows))
    patterns = document["patterns"]
    sections.append(_brief_table(f"weekday opened ({zone})", [(r["weekday"], r) for r in patterns["by_weekday"]]))
    sections.append(_brief_table(f"hour opened ({zone})", [(f"{r['hour']:02d}h", r) for r in patterns["by_hour"]]))
    for key, title in (("by_venue", "venue"), ("by_signal_type", "signal type"), ("by_tag", "tag")):
        sections.append(_brief_table(title, list(document[key].items())))
    market_title = f"market (busiest {len(document['by_market'])} of {document['markets_tracked']})"
    sections.append(_brief_table(market_title, list(document["by_market"].items())))
    sections.append(_forecast(document))
    sections.append(_decisions(document))
    if "trades" in document:
        sections.append(_trades(document))
    footer = (
        f"* small sample: fewer than {document['settings']['min_trades']} trades "
        f"(or {document['settings']['min_days']} days for daily returns)"
    )
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n\n" + footer


def print_report(config: Config, *, as_json: bool, trades: int | None = None) -> None:
    """Print the report, with the latest ``trades`` trades when that is given."""
    document = build_report(config, trades=trades)
    if as_json:
        print(json.dumps(json.loads(dumps(document)), indent=2))
    else:
        print(format_report(document))
