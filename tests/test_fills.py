"""Positions built from several fills: average entry, pro-rata partial exits."""

from __future__ import annotations

import functools
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import fill, marked, opened, resolved
from hypothesis import given, settings
from hypothesis import strategies as st
from test_metrics import feed
from test_service import ingest, make_config, running, stored

from actors.logger import write_batch
from actors.messages import InvalidMessage, Message, message_to_dict, parse_message
from actors.metrics import MetricsState, load_state_sync
from actors.store import open_database
from actors.trades import TradeRecord, apply_trade_message, record_position, row_to_record

D = Decimal


def build(*messages: Message) -> TradeRecord:
    record: TradeRecord | None = None
    for message in messages:
        record = apply_trade_message(record, message)
    assert record is not None
    return record


LONG = functools.partial(
    opened, market_kind="linear", side="long", size="10", entry_price="100", fees="1"
)


def scaled_in_then_trimmed() -> list[Message]:
    """Long 10 at 100, 10 more at 110, then 5 sold at 120."""
    return [
        LONG("t", minute=0),
        fill("t", "f1", "entry", "10", "110", minute=1, fees="1"),
        fill("t", "f2", "exit", "5", "120", minute=2, fees="0.5"),
    ]


def test_exit_realizes_pro_rata_share() -> None:
    position = record_position(build(*scaled_in_then_trimmed()))
    assert (position.entered_size, position.entered_cost, position.entered_fees) == (D(20), D(2100), D(2))
    assert position.average_entry == D(105)
    # The exit closes a quarter: it takes 525 of cost and 0.5 of entry fees.
    assert position.realized == D(600) - D(525) - D("0.5") - D("0.5")
    assert (position.held_size, position.held_cost, position.held_fees) == (D(15), D(1575), D("1.5"))
    assert position.exited_size == D(5)


def test_short_exit_gains_when_price_falls() -> None:
    record = build(
        LONG("s", side="short", fees="0"),
        fill("s", "x", "exit", "4", "90", minute=3),
    )
    assert record_position(record).realized == D(40)


def test_binary_shares_average_entry() -> None:
    record = build(
        opened("k", size="10", entry_price="0.40", fees="0"),
        fill("k", "2", "entry", "10", "0.50", minute=1),
        fill("k", "3", "exit", "5", "0.70", minute=2),
    )
    position = record_position(record)
    assert position.average_entry == D("0.45")
    assert position.realized == D("1.25")


def test_excess_exit_counted() -> None:
    record = build(LONG("e"), fill("e", "x", "exit", "12", "100", minute=1))
    position = record_position(record)
    assert (position.exited_size, position.held_size, position.excess_size) == (D(10), D(0), D(2))
    # Closing everything at the entry price loses the entry fees.
    assert position.realized == D(-1)


def test_fill_repeat_and_correction() -> None:
    first = build(*scaled_in_then_trimmed())
    assert apply_trade_message(first, scaled_in_then_trimmed()[1]) is first
    corrected = apply_trade_message(first, fill("t", "f1", "entry", "10", "90", minute=1, fees="1"))
    assert len(corrected.fills) == 2
    assert record_position(corrected).average_entry == D(95)


def test_fill_before_opening_is_kept() -> None:
    messages = scaled_in_then_trimmed()
    early = build(messages[1], messages[2], messages[0])
    assert early == build(*messages)


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(6))))
def test_arrival_order_does_not_matter(order: list[int]) -> None:
    messages = scaled_in_then_trimmed() + [
        fill("t", "f3", "entry", "2.5", "101.5", minute=4, fees="0.01"),
        fill("t", "f4", "exit", "7", "99", minute=5),
        fill("t", "f5", "exit", "0.333", "130", minute=6, fees="0.3"),
    ]
    expected = build(*messages)
    assert build(*(messages[index] for index in order)) == expected


def test_fee_shares_sum_back() -> None:
    record = build(
        LONG("r", size="3", entry_price="1", fees="0.01"),
        fill("r", "a", "exit", "1", "1", minute=1),
        fill("r", "b", "exit", "1", "1", minute=2),
        fill("r", "c", "exit", "1", "1", minute=3),
    )
    position = record_position(record)
    # Thirds of 0.01 round to 18 places. The last exit takes the rest, so
    # the fee shares add up to exactly what was paid.
    assert position.held_fees == 0
    assert position.held_cost == 0
    assert position.realized == D("-0.01")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"leg": "sell"}, "leg"),
        ({"price": "0"}, "price"),
        ({"size": "-1"}, "size"),
        ({"fill_id": ""}, "fill_id"),
        ({"fees": "-0.1"}, "fees"),
        ({"filled_at": "yesterday"}, "filled_at"),
        ({"fill": "x"}, "fill"),
    ],
)
def test_bad_fill_names_field(fields: dict[str, Any], field: str) -> None:
    data = message_to_dict(fill("t", "f", "entry", "1", "2"))
    data.update(fields)
    with pytest.raises(InvalidMessage) as caught:
        parse_message(data)
    assert caught.value.field == field


def test_exit_at_zero_is_accepted() -> None:
    record = build(opened("z", fees="0"), fill("z", "x", "exit", "10", "0", minute=1))
    assert record_position(record).realized == D("-9.6")


def test_open_realized_and_marks() -> None:
    state = MetricsState()
    feed(state, *scaled_in_then_trimmed(), marked("t", "100", minute=3))
    snapshot = state.snapshot()
    assert snapshot["open_realized_pnl"] == 74.0
    assert snapshot["equity"]["open_realized_pnl"] == 74.0
    assert snapshot["unrealized_pnl"] == -76.5  # 15 x 100 - 1575 - 1.5
    assert snapshot["open_exposure"] == 1575.0
    assert snapshot["equity"]["current_marked"] == -2.5
    assert snapshot["realized_pnl"] == 0.0


def test_resolution_books_whole_position() -> None:
    state = MetricsState()
    feed(state, *scaled_in_then_trimmed(), resolved("t", "150.5", minute=30, fees="1.5"))
    snapshot = state.snapshot()
    assert snapshot["realized_pnl"] == 150.5
    assert snapshot["open_realized_pnl"] == 0.0
    # Fees of both entries, the partial exit and the final exit.
    assert snapshot["fees"] == 2 + 0.5 + 1.5
    # R over the capital at risk of every entry: 2100 plus 2 of fees.
    assert snapshot["expectancy_r"] == round(150.5 / 2102, 6)
    assert snapshot["execution"]["filled"] == 1


async def test_fills_survive_storage_and_rebuild(tmp_path: Path) -> None:
    messages = scaled_in_then_trimmed() + [marked("t", "100", minute=3)]
    live = MetricsState()
    feed(live, *messages)
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    connection = await open_database(database, archive)
    await write_batch(connection, messages[:2])
    await write_batch(connection, messages[2:])
    cursor = await connection.execute("SELECT * FROM trades")
    rows = await cursor.fetchall()
    await connection.close()
    assert row_to_record(rows[0]) == build(*messages)
    _, rebuilt = load_state_sync(database, archive)
    for name in ("open_realized_pnl", "unrealized_pnl", "open_exposure"):
        assert rebuilt.snapshot()[name] == live.snapshot()[name]


async def test_fill_over_ingest_reaches_feed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        async with ingest(service) as ws:
            batch = [message_to_dict(item) for item in scaled_in_then_trimmed()]
            await ws.send_message(json.dumps(batch))
            reply = json.loads(await ws.get_message())
        assert reply["accepted"] == 3, reply
        with trio.fail_after(5):
            while (service.hub.latest_metrics or {}).get("open_realized_pnl") != 74.0:
                await trio.sleep(0.01)
    (fills,) = stored(config, "SELECT fills FROM trades WHERE trade_id = 't'")[0]
    assert [item[:2] for item in json.loads(fills)] == [["f1", "entry"], ["f2", "exit"]]


def test_notification_shows_average_entry() -> None:
    from actors.notifier import format_resolved

    record = build(*scaled_in_then_trimmed(), resolved("t", "150.5", minute=30))
    assert "(long 20 @ 105, " in format_resolved(record)


def test_older_mark_arriving_later_ignored() -> None:
    newer, older = marked("t", "110", minute=60), marked("t", "90", minute=30)
    record = build(LONG("t"), newer, older)
    assert record.mark_price == D(110)
    assert build(LONG("t"), older, newer) == record


async def test_cents_rejected_over_ingest(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        async with ingest(service) as ws:
            await ws.send_message(json.dumps(message_to_dict(opened("k", fees="0"))))
            assert json.loads(await ws.get_message())["status"] == "accepted"
            batch = [
                {**message_to_dict(fill("k", "f1", "entry", "10", "97")), "ref": "a"},
                {**message_to_dict(fill("k", "f2", "entry", "10", "0.97")), "ref": "b"},
                {"type": "trade_fill", "ref": "c"},
            ]
            await ws.send_message(json.dumps(batch))
            reply = json.loads(await ws.get_message())
            await ws.send_message(json.dumps(message_to_dict(marked("k", "999"))))
            single = json.loads(await ws.get_message())
    assert reply["status"] == "partial"
    assert reply["accepted"] == 1
    assert reply["rejected_count"] == 2
    assert [(entry["index"], entry["ref"], entry["field"]) for entry in reply["rejected"]] == [
        (0, "a", "price"),
        (2, "c", "leg"),
    ]
    assert single["status"] == "rejected"
    assert single["field"] == "price"
    (fills,) = stored(config, "SELECT fills FROM trades WHERE trade_id = 'k'")[0]
    assert [item[0] for item in json.loads(fills)] == ["f2"]


def test_excess_exit_counted_in_execution() -> None:
    excess = fill("e", "x", "exit", "12", "100", minute=1)
    state = MetricsState()
    feed(state, LONG("e"), excess, LONG("f"))
    assert state.snapshot()["execution"]["excess_exit_positions"] == 1
    corrected = MetricsState()
    feed(corrected, LONG("e"), excess, fill("e", "x", "exit", "10", "100", minute=1))
    assert corrected.snapshot()["execution"]["excess_exit_positions"] == 0


async def test_binary_opening_after_cents_fill_rejected(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    connection = await open_database(database, archive)
    cents = fill("b", "f1", "entry", "5", "50", minute=1)
    first = await write_batch(connection, [marked("b", "55"), cents])
    rejected = await write_batch(connection, [opened("b", size="10", entry_price="0.5")])
    # Corrected under the same fill id; the mark in cents is replaced by a newer one.
    await write_batch(connection, [fill("b", "f1", "entry", "5", "0.50", minute=1), marked("b", "0.55", minute=9)])
    accepted = await write_batch(connection, [opened("b", size="10", entry_price="0.5")])
    await connection.close()
    assert first.rejections == {}
    error = rejected.rejections[0]
    assert error.field == "market_kind"
    assert "fill f1 at 50" in str(error)
    assert "send that fill again under its fill_id" in str(error)
    assert accepted.rejections == {}
    assert accepted.trades[0].market_kind == "binary"


async def test_binary_exit_price_in_cents_rejected(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    committed = await write_batch(connection, [opened("b"), resolved("b", "0.4", exit_price="100")])
    await connection.close()
    error = committed.rejections[1]
    assert error.field == "exit_price"
    assert error.to_dict()["value"] == 100


@pytest.mark.parametrize(
    ("field", "sent", "echoed"),
    [("fees", "-55", -55), ("fees", "-0.25", -0.25), ("size", "1e16", 1e16), ("size", "-1", -1)],
)
def test_rejected_number_echoed_as_number(field: str, sent: str, echoed: float) -> None:
    data = message_to_dict(fill("t", "f", "entry", "1", "2"))
    # As the ingest decoder reads JSON numbers.
    data[field] = json.loads(sent, parse_float=Decimal)
    with pytest.raises(InvalidMessage) as caught:
        parse_message(data)
    value = caught.value.to_dict()["value"]
    assert value == echoed
    assert not isinstance(value, str)


async def test_mark_of_ended_trade_does_not_block_opening(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    early = [marked("b", "55", minute=1), resolved("b", "2", minute=3, exit_price="1")]
    await write_batch(connection, early)
    committed = await write_batch(connection, [opened("b", size="10", entry_price="0.5")])
    await connection.close()
    # The mark no longer counts once the trade has ended, so the opening is kept.
    assert committed.rejections == {}
    assert committed.trades[0].market_kind == "binary"


async def test_rejected_opening_names_mark_correction(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    await write_batch(connection, [marked("b", "55", minute=1)])
    rejected = await write_batch(connection, [opened("b")])
    await connection.close()
    assert "send a mark with a later marked_at" in str(rejected.rejections[0])
