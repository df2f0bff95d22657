"""Import the trade log of a Kalshi bot: a CSV file with one row per trade.

The header names the columns ``ticker, side, contracts, entry_price, entry_ts,
exit_price, exit_ts, exit_reason, fees, pnl``, in any order. Prices are in
cents, so 96 means a price of 0.96 dollars per contract that pays 1 dollar on
a win. Times are epoch seconds. ``fees`` and ``pnl`` are in dollars, and the
PnL is net of the fees. A row whose ``exit_price``, ``exit_ts`` and ``pnl`` are
all empty is a trade that is still open.

Each row becomes a ``TradeOpened`` with the trade id ``kalshi:<ticker>`` and,
unless it is open, a ``TradeResolved``. The entry price is taken as the
implied probability of the held side, because a binary contract's price is the
market's probability that it pays out.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from actors.messages import InvalidMessage, Message, TradeOpened, TradeResolved, parse_message
from importers import (
    RowError,
    RowProblem,
    check_trade_times,
    parse_epoch_seconds,
    parse_number,
    read_csv_records,
)

REQUIRED_COLUMNS = (
    "ticker",
    "side",
    "contracts",
    "entry_price",
    "entry_ts",
    "exit_price",
    "exit_ts",
    "fees",
    "pnl",
)
VENUE = "kalshi"
_SIDES = frozenset({"yes", "no"})
_CENTS_PER_DOLLAR = Decimal(100)


def read_trades(text: str, path: Path, *, strategy: str) -> tuple[list[Message], list[RowProblem]]:
    """Convert every row of a Kalshi trade log, with ``strategy`` as every trade's strategy."""
    records, problems = read_csv_records(text, path, "kalshi", REQUIRED_COLUMNS)
    messages: list[Message] = []
    first_line_of_id: dict[str, int] = {}
    for record in records:
        try:
            opened, resolved = _convert_row(record.fields, strategy)
            earlier = first_line_of_id.get(opened.trade_id)
            if earlier is not None:
                raise RowError(
                    f"duplicate trade id {opened.trade_id!r}, first seen on line {earlier}"
                )
        except (RowError, InvalidMessage) as error:
            problems.append(RowProblem(record.line, str(error)))
            continue
        first_line_of_id[opened.trade_id] = record.line
        messages.append(opened)
        if resolved is not None:
            messages.append(resolved)
    problems.sort(key=lambda problem: problem.line)
    return messages, problems


def _price(fields: dict[str, str], column: str, *, allow_zero: bool) -> Decimal:
    cents = parse_number(fields[column], column)
    if cents > _CENTS_PER_DOLLAR or cents < 0 or (cents == 0 and not allow_zero):
        allowed = "between 0 and 100" if allow_zero else "above 0 and at most 100"
        raise RowError(f"column {column!r}: {fields[column]!r} cents must be {allowed}")
    return cents / _CENTS_PER_DOLLAR


def _convert_row(fields: dict[str, str], strategy: str) -> tuple[TradeOpened, TradeResolved | None]:
    ticker = fields["ticker"].strip()
    if not ticker:
        raise RowError("column 'ticker' is empty")
    side = fields["side"].strip().lower()
    if side not in _SIDES:
        raise RowError(f"column 'side': {fields['side']!r} must be yes or no")
    trade_id = f"kalshi:{ticker}"
    entry_price = _price(fields, "entry_price", allow_zero=False)

    opened = parse_message(
        {
            "type": "trade_opened",
            "trade_id": trade_id,
            "venue": VENUE,
            "market": ticker,
            "side": side,
            "size": parse_number(fields["contracts"], "contracts"),
            "entry_price": entry_price,
            "fees": parse_number(fields["fees"], "fees"),
            "strategy": strategy,
            "opened_at": parse_epoch_seconds(fields["entry_ts"], "entry_ts"),
            "market_kind": "binary",
            "probability": entry_price,
        }
    )
    assert isinstance(opened, TradeOpened)

    exit_columns = ("exit_price", "exit_ts", "pnl")
    blank = [column for column in exit_columns if not fields[column].strip()]
    if len(blank) == len(exit_columns):
        return opened, None
    if blank:
        raise RowError(
            f"columns {', '.join(blank)} are empty but other exit columns are set; "
            "an open trade leaves exit_price, exit_ts and pnl all empty"
        )

    resolved = parse_message(
        {
            "type": "trade_resolved",
            "trade_id": trade_id,
            "resolved_at": parse_epoch_seconds(fields["exit_ts"], "exit_ts"),
            "pnl": parse_number(fields["pnl"], "pnl"),
            "exit_price": _price(fields, "exit_price", allow_zero=True),
        }
    )
    assert isinstance(resolved, TradeResolved)
    check_trade_times(opened, resolved)
    return opened, resolved
