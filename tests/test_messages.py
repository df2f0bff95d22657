"""Validation at the boundary: every bad field is named with its value."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from actors.messages import InvalidMessage, message_to_dict, parse_message
from helpers import decision, opened, resolved


def base_open(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "trade_opened",
        "trade_id": "t1",
        "venue": "binance",
        "market": "BTC/USDT",
        "side": "long",
        "size": 0.5,
        "entry_price": 64000.5,
        "strategy": "meanrev",
        "opened_at": "2026-07-01T12:00:00Z",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def test_valid_open_is_parsed_exactly() -> None:
    message = parse_message(base_open(size=0.1, fees="0.07"))
    assert message.size == Decimal("0.1")
    assert message.fees == Decimal("0.07")
    assert message.opened_at == datetime(2026, 7, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"size": -1}, "size", "greater than 0"),
        ({"size": 0}, "size", "greater than 0"),
        ({"size": float("nan")}, "size", "finite"),
        ({"entry_price": float("inf")}, "entry_price", "finite"),
        ({"entry_price": "abc"}, "entry_price", "number"),
        ({"entry_price": True}, "entry_price", "number"),
        ({"size": "1e30"}, "size", "magnitude"),
        ({"trade_id": ...}, "trade_id", "missing"),
        ({"trade_id": ""}, "trade_id", "empty"),
        ({"venue": 7}, "venue", "string"),
        ({"side": "up"}, "side", "one of"),
        ({"opened_at": "2026-07-01T12:00:00"}, "opened_at", "timezone"),
        ({"opened_at": "yesterday"}, "opened_at", "ISO 8601"),
        ({"market_kind": "binary", "entry_price": 96}, "entry_price", "binary"),
        ({"fees": -0.1}, "fees", "at least 0"),
        ({"fee": 0.1}, "fee", "unknown field"),
        ({"tags": "a,b"}, "tags", "list"),
        ({"type": "trade_closed"}, "type", "one of"),
    ],
)
def test_invalid_open_names_field(changes: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(base_open(**changes))
    assert caught.value.field == field
    assert fragment in str(caught.value)
    assert field in str(caught.value)


def test_error_shows_offending_value() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(base_open(size=-3.5))
    assert "-3.5" in str(caught.value)
    assert caught.value.to_dict()["value"] == -3.5


def test_non_object_rejected() -> None:
    with pytest.raises(InvalidMessage, match="JSON object"):
        parse_message([1, 2])


def test_times_are_stored_as_utc() -> None:
    message = parse_message(base_open(opened_at="2026-07-01T14:00:00+02:00"))
    assert message.opened_at == datetime(2026, 7, 1, 12, tzinfo=UTC)
    epoch = parse_message(base_open(opened_at=1785170216))
    assert epoch.opened_at.tzinfo is UTC


def test_round_trip_through_dict() -> None:
    for message in (
        opened("a", tags=["x", "y"], probability="0.9"),
        resolved("a", "-1.25", exit_price="0"),
        decision("hold", params={"threshold": 0.7}, confidence=0.4),
    ):
        assert parse_message(message_to_dict(message)) == message


def test_decision_without_id_gets_stable_id() -> None:
    first = decision("hold", minute=3)
    second = decision("hold", minute=3)
    other = decision("hold", minute=4)
    assert first.key == second.key
    assert first.key != other.key


def test_decision_params_reject_nan() -> None:
    with pytest.raises(InvalidMessage) as caught:
        decision("trade", params={"x": float("nan")})
    assert caught.value.field == "params"


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"trade_id": "sur-\ud800"}, "trade_id", "not valid Unicode"),
        ({"market": "BTC\nERROR forged line"}, "market", "control character"),
        ({"strategy": "\x1b[31mred"}, "strategy", "control character"),
        ({"tags": ["ok", "bad\ud800"]}, "tags[1]", "not valid Unicode"),
        ({"size": "1_0"}, "size", "number such as"),
        ({"size": "NaN"}, "size", "number such as"),
        ({"fees": "1e-999999"}, "fees", "below"),
    ],
)
def test_unstorable_text_and_numbers_rejected(changes: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(base_open(**changes))
    assert caught.value.field == field
    assert fragment in str(caught.value)


def test_fractional_epoch_accepted() -> None:
    for value in (Decimal("1785170216.5"), 1785170216.5, "1785170216.5"):
        message = parse_message(base_open(opened_at=value))
        assert message.opened_at.microsecond == 500_000


def test_outcome_must_match_pnl() -> None:
    with pytest.raises(InvalidMessage) as caught:
        resolved("t1", "-9.63", outcome="win")
    assert caught.value.field == "outcome"
    assert "-9.63" in str(caught.value)


def test_decision_ids_differ_by_content() -> None:
    low = decision("hold", confidence="0.2")
    high = decision("hold", confidence="0.9")
    assert low.key != high.key


def test_error_value_echo_is_bounded() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(base_open(venue="x" * 900))
    echoed = caught.value.to_dict()["value"]
    assert len(echoed) == 200
    with pytest.raises(InvalidMessage) as decimal_error:
        parse_message(base_open(size=Decimal("1E+400")))
    assert decimal_error.value.to_dict()["value"] == "1E+400"
