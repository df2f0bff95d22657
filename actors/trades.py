"""The state of one trade and the rules that move it between states.

The logger stores and the metrics actor counts the result of the same
``apply_trade_message`` function, so that the database and the live metrics
never disagree about a trade. The rules are idempotent: applying a message a
second time leaves the record as it was, which makes redelivery harmless.

A trade is ``open`` until it is resolved or cancelled. Both end states are
final, with one exception: a later resolution replaces an earlier one, so that
a bot can correct a PnL.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from actors.messages import (
    TradeCancelled,
    TradeMarked,
    TradeMessage,
    TradeOpened,
    TradeResolved,
    format_time,
)

Status = Literal["open", "resolved", "cancelled"]


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

    @property
    def ended_at(self) -> datetime | None:
        return self.resolved_at or self.cancelled_at

    @property
    def cost(self) -> Decimal | None:
        """The capital put at risk: size times entry price."""
        if self.size is None or self.entry_price is None:
            return None
        return self.size * self.entry_price


def outcome_of(pnl: Decimal) -> Literal["win", "loss", "draw"]:
    if pnl > 0:
        return "win"
    if pnl < 0:
        return "loss"
    return "draw"


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

    if isinstance(message, TradeMarked):
        # A mark only matters while the position is open; a mark for a trade
        # not yet known is dropped by the caller.
        if record is None or record.status != "open":
            return record  # type: ignore[return-value]
        return dataclasses.replace(record, mark_price=message.price)

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
_TIME_COLUMNS = frozenset({"opened_at", "resolved_at", "cancelled_at"})


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
        else:
            row.append(value)
    return tuple(row)


def row_to_record(row: tuple[Any, ...]) -> TradeRecord:
    values: dict[str, Any] = {}
    for name, value in zip(TRADE_COLUMNS, row, strict=True):
        if value is None:
            if name == "tags":
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
        else:
            values[name] = value
    return TradeRecord(**values)
