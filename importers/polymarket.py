"""Import the fills ledger of a Polymarket bot, a CSV file with one row per fill.

The header names the columns ``Timestamp, Market, Action, Size, Routing,
Execution Price, AI Probability, Reasoning``, and fields are quoted as in
RFC 4180. ``Action`` is ``BUY_YES`` or ``BUY_NO`` for an entry and
``SELL_YES`` or ``SELL_NO`` for an exit. ``Size`` is the USDC cost of an entry,
so it buys ``Size / Execution Price`` shares. ``AI Probability`` is the
model's probability of YES as a percent such as ``85.0%``, or ``N/A``.

Timestamps carry no timezone and are taken as UTC. That is an assumption: the
known ledgers are written by CI runners whose clocks are set to UTC.

The ledger has no trade ids, so positions are rebuilt in file order. Every
BUY row for the same market text (with surrounding spaces stripped) and side
adds to one open position, and the next SELL row of that market and side
closes all of it, whatever its ``Size``. A later BUY starts a new position.
A position's id is ``polymarket:<first 12 hex digits of SHA-1 of the market
text>:<side>:<n>``, where n counts the positions of that market and side. The
id therefore stays the same when the bot appends rows to the ledger.

Each BUY row becomes a ``Decision`` to trade. Each position becomes one
``TradeOpened`` at its first fill, with the total shares as its size and the
average cost per share as its entry price, and a ``TradeResolved`` when it is
closed. Positions without a SELL stay open.

The bot writes an exit row for both sides of a market when it exits, with
``Size`` 0.0 for the side it does not hold. Such a row with no open position
is skipped without a problem. A SELL row with a positive ``Size`` and no open
position is reported as a problem, since its PnL cannot be computed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from actors.messages import (
    Decision,
    InvalidMessage,
    Message,
    TradeOpened,
    TradeResolved,
    parse_message,
)
from importers import (
    CsvRecord,
    RowError,
    RowProblem,
    check_trade_times,
    parse_number,
    read_csv_records,
)

REQUIRED_COLUMNS = (
    "Timestamp",
    "Market",
    "Action",
    "Size",
    "Routing",
    "Execution Price",
    "AI Probability",
)
VENUE = "polymarket"

# USDC has 6 decimal places. Rounding the PnL to them removes the last-digit
# noise of dividing by prices, so a sale at the entry price is an exact draw.
_USDC_UNIT = Decimal("0.000001")
# Rounding the average entry price to 12 places keeps more places than any
# fill price in the known ledgers has, and drops the noise of the division.
_PRICE_UNIT = Decimal("1e-12")


@dataclass(frozen=True)
class _Fill:
    line: int
    time: datetime
    cost: Decimal
    price: Decimal
    probability: Decimal | None
    routing: str | None

    @property
    def shares(self) -> Decimal:
        return self.cost / self.price


@dataclass
class _Position:
    trade_id: str
    market: str
    side: str
    fills: list[_Fill] = field(default_factory=list)

    @property
    def cost(self) -> Decimal:
        return sum((fill.cost for fill in self.fills), Decimal(0))

    @property
    def shares(self) -> Decimal:
        return sum((fill.shares for fill in self.fills), Decimal(0))


@dataclass(frozen=True)
class _Row:
    line: int
    time: datetime
    market: str
    is_buy: bool
    side: str
    size: Decimal
    price: Decimal
    routing: str | None
    ai_probability: str


@dataclass
class _Ledger:
    """The positions rebuilt so far and the messages and problems they produced."""

    strategy: str
    messages: list[Message] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    open_positions: dict[tuple[str, str], _Position] = field(default_factory=dict)
    position_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    last_exits: dict[tuple[str, str], tuple[int, datetime]] = field(default_factory=dict)


def read_fills(text: str, path: Path, *, strategy: str) -> tuple[list[Message], list[RowProblem]]:
    """Rebuild the positions of a Polymarket fills ledger, with ``strategy`` as their strategy."""
    records, problems = read_csv_records(text, path, "polymarket", REQUIRED_COLUMNS)
    ledger = _Ledger(strategy=strategy, problems=problems)
    for record in records:
        try:
            row = _parse_row(record)
            if row.is_buy:
                _add_entry(ledger, row)
            else:
                _close_position(ledger, row)
        except (RowError, InvalidMessage) as error:
            ledger.problems.append(RowProblem(record.line, str(error)))

    for position in ledger.open_positions.values():
        try:
            ledger.messages.append(_opened_message(position, strategy))
        except InvalidMessage as error:
            ledger.problems.append(RowProblem(position.fills[0].line, str(error)))

    ledger.problems.sort(key=lambda problem: problem.line)
    return ledger.messages, ledger.problems


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RowError(
            f"column 'Timestamp': {text!r} is not a time such as 2026-06-14 01:32:18"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _parse_row(record: CsvRecord) -> _Row:
    fields = record.fields
    market = fields["Market"].strip()
    if not market:
        raise RowError("column 'Market' is empty")
    kind, _, side = fields["Action"].strip().upper().partition("_")
    if kind not in ("BUY", "SELL") or side not in ("YES", "NO"):
        raise RowError(
            f"column 'Action': {fields['Action']!r} must be BUY_YES, BUY_NO, SELL_YES or SELL_NO"
        )
    price = parse_number(fields["Execution Price"], "Execution Price")
    if not 0 <= price <= 1:
        raise RowError(
            f"column 'Execution Price': {fields['Execution Price']!r} must lie between 0 and 1"
        )
    size = parse_number(fields["Size"], "Size")
    if size < 0:
        raise RowError(f"column 'Size': {fields['Size']!r} must not be negative")
    return _Row(
        line=record.line,
        time=_parse_time(fields["Timestamp"]),
        market=market,
        is_buy=kind == "BUY",
        side=side.lower(),
        size=size,
        price=price,
        routing=fields["Routing"].strip() or None,
        ai_probability=fields["AI Probability"],
    )


def _held_probability(text: str, side: str) -> Decimal | None:
    """Convert the model's YES probability in percent to the probability of the held side."""
    stripped = text.strip()
    if not stripped or stripped.upper() == "N/A":
        return None
    percent = parse_number(stripped.removesuffix("%"), "AI Probability")
    if not 0 <= percent <= 100:
        raise RowError(f"column 'AI Probability': {text!r} must lie between 0% and 100%")
    yes_probability = percent / 100
    return yes_probability if side == "yes" else 1 - yes_probability


def _new_trade_id(ledger: _Ledger, market: str, side: str) -> str:
    number = ledger.position_counts.get((market, side), 0) + 1
    digest = hashlib.sha1(market.encode("utf-8")).hexdigest()[:12]
    return f"polymarket:{digest}:{side}:{number}"


def _add_entry(ledger: _Ledger, row: _Row) -> None:
    if row.size == 0 or row.price == 0:
        raise RowError("an entry needs a positive Size and a positive Execution Price")
    key = (row.market, row.side)
    position = ledger.open_positions.get(key)
    if position is None:
        position = _Position(_new_trade_id(ledger, row.market, row.side), row.market, row.side)
    fill = _Fill(
        line=row.line,
        time=row.time,
        cost=row.size,
        price=row.price,
        probability=_held_probability(row.ai_probability, row.side),
        routing=row.routing,
    )

    decision = parse_message(
        {
            "type": "decision",
            "decision_id": f"{position.trade_id}:entry-{len(position.fills) + 1}",
            "decided_at": row.time,
            "strategy": ledger.strategy,
            "market": row.market,
            "action": "trade",
            "venue": VENUE,
            "side": row.side,
            "probability": fill.probability,
            "signal_type": row.routing,
            "trade_id": position.trade_id,
            "params": {"execution_price": str(row.price), "size_usdc": str(row.size)},
        }
    )
    assert isinstance(decision, Decision)
    # The fill alone must also pass as a trade opening, so that one bad fill
    # is reported on its own line instead of spoiling its whole position.
    _opened_message(_Position(position.trade_id, row.market, row.side, [fill]), ledger.strategy)

    if not position.fills:
        ledger.open_positions[key] = position
        ledger.position_counts[key] = ledger.position_counts.get(key, 0) + 1
    position.fills.append(fill)
    ledger.messages.append(decision)


def _close_position(ledger: _Ledger, row: _Row) -> None:
    key = (row.market, row.side)
    position = ledger.open_positions.get(key)
    if position is None:
        if row.size == 0:
            return
        side = row.side.upper()
        reason = f"SELL_{side} with Size {row.size} but no open {side} position in {row.market!r}"
        last_exit = ledger.last_exits.get(key)
        if last_exit is not None and last_exit[1] == row.time:
            reason += f"; it repeats the exit on line {last_exit[0]} at the same time"
        raise RowError(reason)

    # NOTE: the whole position is closed even when a positive Size differs
    # from its cost, because the known ledgers have no partial exits.
    shares = position.shares
    opened = _opened_message(position, ledger.strategy)
    resolved = parse_message(
        {
            "type": "trade_resolved",
            "trade_id": position.trade_id,
            "resolved_at": row.time,
            "pnl": (row.price * shares - position.cost).quantize(_USDC_UNIT),
            "exit_price": row.price,
        }
    )
    assert isinstance(resolved, TradeResolved)
    check_trade_times(opened, resolved)

    del ledger.open_positions[key]
    ledger.last_exits[key] = (row.line, row.time)
    ledger.messages.append(opened)
    ledger.messages.append(resolved)


def _opened_message(position: _Position, strategy: str) -> TradeOpened:
    first = position.fills[0]
    shares = position.shares
    average_price = (position.cost / shares).quantize(_PRICE_UNIT).normalize()
    opened = parse_message(
        {
            "type": "trade_opened",
            "trade_id": position.trade_id,
            "venue": VENUE,
            "market": position.market,
            "side": position.side,
            "size": shares,
            "entry_price": average_price,
            "strategy": strategy,
            "opened_at": first.time,
            "market_kind": "binary",
            "probability": first.probability,
            "signal_type": first.routing,
        }
    )
    assert isinstance(opened, TradeOpened)
    return opened
