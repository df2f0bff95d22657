"""The state of one trade and the rules that move it between states.

The logger stores and the metrics actor counts the result of the same
``apply_trade_message`` function, so that the database and the live metrics
never disagree about a trade. The rules are idempotent: applying a message a
second time leaves the record as it was, which makes redelivery harmless.

A trade is ``open`` until it is resolved or cancelled. Both end states are
final, with one exception: a later resolution replaces an earlier one, so that
a bot can correct a PnL.

A trade is one position. Further fills (``TradeFill``) add to it, giving an
average entry price, or reduce it, realizing PnL for the part they close
(``position_of``). The record keeps every fill in time order, so the
position that results does not depend on the order in which fills arrive.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, Literal

from actors.messages import (
    InvalidMessage,
    TradeCancelled,
    TradeFill,
    TradeMarked,
    TradeMessage,
    TradeOpened,
    TradeResolved,
    format_time,
)

Status = Literal["open", "resolved", "cancelled"]

# 80 significant digits, as the metrics' sums use. A product of two amounts
# of up to 40 significant digits each is exact. Only the pro-rata share of a
# partial exit divides, and ``_share`` rounds it.
_POSITION_CONTEXT = Context(prec=80)
_SHORT_SIDES = frozenset({"short", "sell"})


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill after the opening: ``entry`` adds to the position, ``exit`` reduces it."""

    fill_id: str
    leg: Literal["entry", "exit"]
    size: Decimal
    price: Decimal
    fees: Decimal
    filled_at: datetime

    @property
    def order(self) -> tuple[datetime, int, str]:
        # At the same instant, entries count before exits.
        return (self.filled_at, 0 if self.leg == "entry" else 1, self.fill_id)


@dataclass(frozen=True, slots=True)
class TradeRecord:
    """One row of the ``trades`` table.

    The opening fields are ``None`` when a resolution or cancellation arrived
    before the trade's opening message; they are filled in when it comes.
    """

    trade_id: str
    status: Status
    venue: str | None = None
    market: str | None = None
    side: str | None = None
    size: Decimal | None = None
    entry_price: Decimal | None = None
    fees: Decimal = Decimal(0)
    strategy: str | None = None
    opened_at: datetime | None = None
    market_kind: str | None = None
    probability: Decimal | None = None
    signal_type: str | None = None
    tags: tuple[str, ...] = ()
    exit_price: Decimal | None = None
    pnl: Decimal | None = None
    outcome: Literal["win", "loss", "draw"] | None = None
    exit_fees: Decimal = Decimal(0)
    resolved_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    # Latest price reported for an open position, and the bot's expected
    # entry price and requested size.
    mark_price: Decimal | None = None
    expected_price: Decimal | None = None
    requested_size: Decimal | None = None
    # Fills after the opening, in time order.
    # NOTE: each new fill rewrites the trade's whole fill list, so a position
    # with many thousands of fills costs more per fill; none is refused.
    fills: tuple[Fill, ...] = ()
    # The time of ``mark_price``: an older mark that arrives later is ignored.
    marked_at: datetime | None = None

    @property
    def ended_at(self) -> datetime | None:
        return self.resolved_at or self.cancelled_at

    @property
    def cost(self) -> Decimal | None:
        """The capital put at risk: size times entry price."""
        if self.size is None or self.entry_price is None:
            return None
        return self.size * self.entry_price


@dataclass(frozen=True, slots=True)
class Position:
    """A position built from its opening and its fills, at average cost.

    ``entered_*`` add up every entry (the opening and entry fills): the
    size, its cost (size times price) and the fees paid. ``held_*`` is what
    is still open: its size, the cost basis of that size and the entry fees
    it still carries. Each exit takes its share of the cost basis and of the
    entry fees, in proportion to the size it closes (``_share`` rounds it).
    ``realized`` adds up what the exits made net of those fees and their own. An exit larger
    than what is held closes what is held; the rest is ``excess_size``.
    """

    entered_size: Decimal
    entered_cost: Decimal
    entered_fees: Decimal
    held_size: Decimal
    held_cost: Decimal
    held_fees: Decimal
    exited_size: Decimal
    exit_fees: Decimal
    realized: Decimal
    excess_size: Decimal

    @property
    def average_entry(self) -> Decimal | None:
        if not self.entered_size:
            return None
        return _POSITION_CONTEXT.divide(self.entered_cost, self.entered_size)


def _share(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """Return ``amount * part / whole``, rounded half-even to a fixed number of places.

    The places are those of ``amount``, at least 18 and at most 40. The share
    stays a short decimal, so sums that add it and later take it out again
    come back exactly. A share of 0.01 is never cut to 0.
    """
    exponent = max(min(amount.as_tuple().exponent, -18), -40)  # type: ignore[type-var]
    exact = _POSITION_CONTEXT.divide(_POSITION_CONTEXT.multiply(amount, part), whole)
    return exact.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_EVEN, context=_POSITION_CONTEXT)


def position_of(
    side: str | None,
    size: Decimal | None,
    entry_price: Decimal | None,
    fees: Decimal,
    fills: tuple[Fill, ...],
) -> Position:
    """Replay the opening, then the fills in time order, into a position.

    The opening counts first whatever its time, so that an exit stamped a
    little before it (the venue's clock against the bot's) still closes it.
    """
    context = _POSITION_CONTEXT
    add, subtract, multiply = context.add, context.subtract, context.multiply
    direction = -1 if side in _SHORT_SIDES else 1
    zero = Decimal(0)
    entered_size = entered_cost = entered_fees = zero
    held_size = held_cost = held_fees = zero
    exited = exit_fees = realized = excess = zero
    if size is not None and entry_price is not None:
        entered_size = held_size = size
        entered_cost = held_cost = multiply(size, entry_price)
        entered_fees = held_fees = fees
    for fill in fills:
        if fill.leg == "entry":
            cost = multiply(fill.size, fill.price)
            entered_size = add(entered_size, fill.size)
            entered_cost = add(entered_cost, cost)
            entered_fees = add(entered_fees, fill.fees)
            held_size = add(held_size, fill.size)
            held_cost = add(held_cost, cost)
            held_fees = add(held_fees, fill.fees)
            continue
        closed = min(fill.size, held_size)
        excess = add(excess, subtract(fill.size, closed))
        exit_fees = add(exit_fees, fill.fees)
        if closed == held_size:
            cost_part, fee_part = held_cost, held_fees
        else:
            cost_part = _share(held_cost, closed, held_size)
            fee_part = _share(held_fees, closed, held_size)
        move = subtract(multiply(closed, fill.price), cost_part)
        gained = move if direction > 0 else -move
        realized = subtract(add(realized, gained), add(fee_part, fill.fees))
        exited = add(exited, closed)
        held_size = subtract(held_size, closed)
        held_cost = subtract(held_cost, cost_part)
        held_fees = subtract(held_fees, fee_part)
    return Position(
        entered_size, entered_cost, entered_fees, held_size, held_cost, held_fees,
        exited, exit_fees, realized, excess,
    )


def record_position(record: TradeRecord) -> Position:
    return position_of(record.side, record.size, record.entry_price, record.fees, record.fills)


def outcome_of(pnl: Decimal) -> Literal["win", "loss", "draw"]:
    if pnl > 0:
        return "win"
    if pnl < 0:
        return "loss"
    return "draw"


BINARY_PRICE_LIMIT = Decimal(1)


def check_against(record: TradeRecord | None, message: TradeMessage) -> None:
    """Raise ``InvalidMessage`` for a message that the stored trade shows to be wrong.

    The message alone cannot tell that a fill or mark price of 97 is in
    cents: the trade's market kind, known from its opening, does.
    """
    if record is None:
        return
    if isinstance(message, TradeOpened):
        if message.market_kind == "binary":
            _check_stored_prices(record)
        return
    if record.market_kind != "binary":
        return
    if isinstance(message, (TradeFill, TradeMarked)):
        name, price = "price", message.price
    elif isinstance(message, TradeResolved):
        name, price = "exit_price", message.exit_price
    else:
        return
    if price is not None and price > BINARY_PRICE_LIMIT:
        raise InvalidMessage(
            name,
            price,
            f"trade {message.trade_id} is on a binary market, whose prices lie in [0, 1]; "
            "convert cents to dollars",
        )


def _check_stored_prices(record: TradeRecord) -> None:
    """Raise for a binary opening when messages stored before it carry prices above 1.

    Each case names how the bot corrects the stored value before it sends
    the opening again.
    """
    stored = [
        (f"fill {fill.fill_id} at {fill.price}", fill.price, "send that fill again under its fill_id")
        for fill in record.fills
    ]
    if record.status == "open":
        # A mark counts only while the position is open, and a newer one replaces it.
        stored.append(
            (f"a mark at {record.mark_price}", record.mark_price,
             "send a mark with a later marked_at")
        )
    stored.append(
        (f"a resolution with exit_price {record.exit_price}", record.exit_price,
         "send the resolution again")
    )
    for description, price, correction in stored:
        if price is not None and price > BINARY_PRICE_LIMIT:
            raise InvalidMessage(
                "market_kind",
                "binary",
                f"trade {record.trade_id} already has {description}, above a binary market's 1; "
                f"{correction} with the price in dollars, then this opening",
            )


def apply_trade_message(record: TradeRecord | None, message: TradeMessage) -> TradeRecord:
    """Return the record that results from applying ``message`` to ``record``."""
    if isinstance(message, TradeOpened):
        opening = {
            "venue": message.venue,
            "market": message.market,
            "side": message.side,
            "size": message.size,
            "entry_price": message.entry_price,
            "fees": message.fees,
            "strategy": message.strategy,
            "opened_at": message.opened_at,
            "market_kind": message.market_kind,
            "probability": message.probability,
            "signal_type": message.signal_type,
            "tags": message.tags,
            "expected_price": message.expected_price,
            "requested_size": message.requested_size,
        }
        if record is None:
            return TradeRecord(trade_id=message.trade_id, status="open", **opening)
        # The opening fields are filled in whatever the status: an opening that
        # arrives after the resolution must not reopen the trade.
        return dataclasses.replace(record, **opening)

    if isinstance(message, TradeResolved):
        if record is not None and record.status == "cancelled":
            return record
        resolution = {
            "status": "resolved",
            "exit_price": message.exit_price,
            "pnl": message.pnl,
            "outcome": message.outcome or outcome_of(message.pnl),
            "exit_fees": message.fees,
            "resolved_at": message.resolved_at,
        }
        if record is None:
            return TradeRecord(trade_id=message.trade_id, **resolution)  # type: ignore[arg-type]
        return dataclasses.replace(record, **resolution)  # type: ignore[arg-type]

    if isinstance(message, TradeFill):
        fill = Fill(
            message.fill_id, message.leg, message.size, message.price, message.fees,
            message.filled_at,
        )
        current = record.fills if record is not None else ()
        if fill in current:
            return record  # type: ignore[return-value]
        # Another fill under the same id corrects it.
        other_fills = [known for known in current if known.fill_id != fill.fill_id]
        other_fills.append(fill)
        fills = tuple(sorted(other_fills, key=lambda known: known.order))
        if record is None:
            return TradeRecord(trade_id=message.trade_id, status="open", fills=fills)
        return dataclasses.replace(record, fills=fills)

    if isinstance(message, TradeMarked):
        if record is None:
            # A mark that overtook its opening: the position exists.
            return TradeRecord(
                trade_id=message.trade_id, status="open",
                mark_price=message.price, marked_at=message.marked_at,
            )
        # A mark only matters while the position is open. The latest mark by
        # time wins, and at the same time the higher price, so that the
        # order of arrival does not matter.
        if record.status != "open":
            return record
        if record.marked_at is not None and record.mark_price is not None:
            if (message.marked_at, message.price) <= (record.marked_at, record.mark_price):
                return record
        return dataclasses.replace(record, mark_price=message.price, marked_at=message.marked_at)

    assert isinstance(message, TradeCancelled)
    if record is not None and record.status != "open":
        return record
    cancellation = {
        "status": "cancelled",
        "cancelled_at": message.cancelled_at,
        "cancel_reason": message.reason,
    }
    if record is None:
        return TradeRecord(trade_id=message.trade_id, **cancellation)  # type: ignore[arg-type]
    return dataclasses.replace(record, **cancellation)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Conversion to and from SQLite rows. Decimals are stored as TEXT so that they
# come back exactly; times as fixed-width UTC text so that text order is time
# order.

TRADE_COLUMNS = tuple(f.name for f in dataclasses.fields(TradeRecord))
_DECIMAL_COLUMNS = frozenset(
    {
        "size",
        "entry_price",
        "fees",
        "probability",
        "exit_price",
        "pnl",
        "exit_fees",
        "mark_price",
        "expected_price",
        "requested_size",
    }
)
_TIME_COLUMNS = frozenset({"opened_at", "resolved_at", "cancelled_at", "marked_at"})


def fills_to_text(fills: tuple[Fill, ...]) -> str | None:
    """Encode fills as a JSON list of [id, leg, size, price, fees, time] for storage."""
    if not fills:
        return None
    return json.dumps(
        [
            [fill.fill_id, fill.leg, str(fill.size), str(fill.price), str(fill.fees),
             format_time(fill.filled_at)]
            for fill in fills
        ],
        separators=(",", ":"),
    )


def fills_from_text(text: str | None) -> tuple[Fill, ...]:
    if not text:
        return ()
    return tuple(
        Fill(fill_id, leg, Decimal(size), Decimal(price), Decimal(fees), datetime.fromisoformat(at))
        for fill_id, leg, size, price, fees, at in json.loads(text)
    )


def record_to_row(record: TradeRecord) -> tuple[Any, ...]:
    row: list[Any] = []
    for name in TRADE_COLUMNS:
        value = getattr(record, name)
        if value is None:
            row.append(None)
        elif name in _DECIMAL_COLUMNS:
            row.append(str(value))
        elif name in _TIME_COLUMNS:
            row.append(format_time(value))
        elif name == "tags":
            row.append(json.dumps(list(value)) if value else None)
        elif name == "fills":
            row.append(fills_to_text(value))
        else:
            row.append(value)
    return tuple(row)


def row_to_record(row: tuple[Any, ...]) -> TradeRecord:
    values: dict[str, Any] = {}
    for name, value in zip(TRADE_COLUMNS, row, strict=True):
        if value is None:
            if name in ("tags", "fills"):
                values[name] = ()
            elif name in ("fees", "exit_fees"):
                values[name] = Decimal(0)
            else:
                values[name] = None
        elif name in _DECIMAL_COLUMNS:
            values[name] = Decimal(value)
        elif name in _TIME_COLUMNS:
            values[name] = datetime.fromisoformat(value)
        elif name == "tags":
            values[name] = tuple(json.loads(value))
        elif name == "fills":
            values[name] = fills_from_text(value)
        else:
            values[name] = value
    return TradeRecord(**values)
