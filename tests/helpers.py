"""Builders for valid messages, so that each test states only what it varies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from actors.messages import Message, parse_message

BASE_TIME = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def opened(trade_id: str, minute: int = 0, **fields: Any) -> Message:
    data: dict[str, Any] = {
        "type": "trade_opened",
        "trade_id": trade_id,
        "venue": "kalshi",
        "market": "KXBTC15M-TEST",
        "side": "yes",
        "size": "10",
        "entry_price": "0.96",
        "fees": "0.03",
        "strategy": "momentum",
        "market_kind": "binary",
        "opened_at": (BASE_TIME + timedelta(minutes=minute)).isoformat(),
    }
    data.update(fields)
    return parse_message(data)


def resolved(trade_id: str, pnl: str, minute: int = 10, **fields: Any) -> Message:
    data: dict[str, Any] = {
        "type": "trade_resolved",
        "trade_id": trade_id,
        "pnl": pnl,
        "resolved_at": (BASE_TIME + timedelta(minutes=minute)).isoformat(),
    }
    data.update(fields)
    return parse_message(data)


def fill(
    trade_id: str, fill_id: str, leg: str, size: str, price: str, minute: int = 5, **fields: Any
) -> Message:
    data: dict[str, Any] = {
        "type": "trade_fill",
        "trade_id": trade_id,
        "fill_id": fill_id,
        "leg": leg,
        "size": size,
        "price": price,
        "filled_at": (BASE_TIME + timedelta(minutes=minute)).isoformat(),
    }
    data.update(fields)
    return parse_message(data)


def marked(trade_id: str, price: str, minute: int = 5) -> Message:
    return parse_message(
        {
            "type": "trade_marked",
            "trade_id": trade_id,
            "price": price,
            "marked_at": (BASE_TIME + timedelta(minutes=minute)).isoformat(),
        }
    )


def cancelled(trade_id: str, minute: int = 5) -> Message:
    return parse_message(
        {
            "type": "trade_cancelled",
            "trade_id": trade_id,
            "cancelled_at": (BASE_TIME + timedelta(minutes=minute)).isoformat(),
        }
    )


def decision(action: str, minute: int = 0, **fields: Any) -> Message:
    data: dict[str, Any] = {
        "type": "decision",
        "decided_at": (BASE_TIME + timedelta(minutes=minute)).isoformat(),
        "strategy": "momentum",
        "market": "KXBTC15M-TEST",
        "action": action,
    }
    data.update(fields)
    return parse_message(data)
