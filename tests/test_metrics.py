"""The metrics state and actor: exact sums, no NaN, rebuild after restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from helpers import cancelled, decision, opened, resolved

from actors.logger import Committed, write_batch
from actors.messages import dumps
from actors.metrics import MetricsState, compute_from_records, run_metrics
from actors.store import open_database
from actors.trades import TradeRecord, apply_trade_message
from supervisor.config import MetricsConfig
from supervisor.mailbox import Backlog


def feed(state: MetricsState, *messages: Any) -> dict[str, TradeRecord]:
    """Apply messages as the logger does, one committed change each; return the records."""
    records: dict[str, TradeRecord] = {}
    for message in messages:
        before = records.get(message.trade_id)
        after = apply_trade_message(before, message)
        if after != before:
            records[message.trade_id] = after
            state.apply_change(before, after)
    return records


def test_counts_and_pnl() -> None:
    state = MetricsState()
    feed(
        state,
        opened("a"), resolved("a", "0.37"),
        opened("b"), resolved("b", "-9.63"),
        opened("c"), resolved("c", "0"),
        opened("d"),
        opened("e"), cancelled("e"),
    )
    snapshot = state.snapshot()
    assert (snapshot["wins"], snapshot["losses"], snapshot["draws"]) == (1, 1, 1)
    assert (snapshot["open"], snapshot["resolved"], snapshot["cancelled"]) == (1, 3, 1)
    assert snapshot["realized_pnl"] == -9.26
    assert snapshot["win_rate"] == 0.5
    assert snapshot["open_exposure"] == 9.6
    assert snapshot["profit_factor"] == round(0.37 / 9.63, 6)


def test_undefined_ratios_are_null() -> None:
    state = MetricsState()
    feed(state, opened("a"), resolved("a", "1"))
    snapshot = state.snapshot()
    assert snapshot["profit_factor"] is None
    empty = MetricsState().snapshot()
    assert empty["win_rate"] is None
    text = dumps(empty) + dumps(snapshot)
    assert "NaN" not in text
    assert "Infinity" not in text


def test_correction_replaces_pnl() -> None:
    state = MetricsState()
    feed(state, opened("a"), resolved("a", "5"), resolved("a", "-2"))
    snapshot = state.snapshot()
    assert snapshot["realized_pnl"] == -2.0
    assert (snapshot["wins"], snapshot["losses"]) == (0, 1)
    assert snapshot["max_drawdown"] == 2.0


def test_max_drawdown_in_time_order() -> None:
    in_order = MetricsState()
    feed(
        in_order,
        resolved("a", "10", minute=1), resolved("b", "-4", minute=2),
        resolved("c", "-3", minute=3), resolved("d", "8", minute=4),
    )
    shuffled = MetricsState()
    feed(
        shuffled,
        resolved("d", "8", minute=4), resolved("b", "-4", minute=2),
        resolved("a", "10", minute=1), resolved("c", "-3", minute=3),
    )
    assert in_order.snapshot()["max_drawdown"] == 7.0
    assert shuffled.snapshot()["max_drawdown"] == 7.0


def test_per_strategy_breakdown() -> None:
    state = MetricsState()
    feed(
        state,
        opened("a", strategy="alpha"), resolved("a", "1"),
        opened("b", strategy="beta"), resolved("b", "-1"),
    )
    by_strategy = state.snapshot()["by_strategy"]
    assert set(by_strategy) == {"alpha", "beta"}
    assert by_strategy["alpha"]["wins"] == 1
    assert by_strategy["beta"]["losses"] == 1


def test_incremental_equals_recomputation() -> None:
    state = MetricsState()
    messages = []
    for index in range(50):
        messages.append(opened(f"t{index}", minute=index))
        if index % 3:
            messages.append(resolved(f"t{index}", str(index % 7 - 3), minute=index + 1))
    records = feed(state, *messages)
    rebuilt = compute_from_records(records.values())
    left, right = state.snapshot(), rebuilt.snapshot()
    left.pop("generated_at")
    right.pop("generated_at")
    assert left == right


async def test_actor_rebuilds_and_publishes(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    connection = await open_database(database, archive)
    await write_batch(connection, [opened("a"), resolved("a", "2"), decision("hold")])
    committed = await write_batch(connection, [opened("b")])
    await connection.close()

    published: list[dict[str, Any]] = []
    inbox: Backlog[Committed] = Backlog("metrics")
    config = MetricsConfig(publish_interval=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_metrics, config, inbox, database, archive, published.append)
        # The actor is ready before its rebuild, so the first snapshot follows.
        while not published:
            await trio.sleep(0.01)
        assert published[-1]["resolved"] == 1
        assert published[-1]["open"] == 1
        assert published[-1]["decisions"] == {"trade": 0, "hold": 1}
        # A transaction that the rebuild already saw is not counted again.
        inbox.put(committed)
        newer = decision("hold", minute=9)
        inbox.put(Committed(committed.seq + 1, [], [newer]))
        with trio.fail_after(5):
            while published[-1]["decisions"]["hold"] != 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert published[-1]["open"] == 1
    json.dumps(published[-1], allow_nan=False)


async def test_actor_coalesces_publishes(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    connection = await open_database(database, archive)
    await connection.close()
    first = apply_trade_message(None, opened("a"))
    second = apply_trade_message(None, opened("b"))

    published: list[dict[str, Any]] = []
    times: list[float] = []

    def publish(document: dict[str, Any]) -> None:
        published.append(document)
        times.append(trio.current_time())

    inbox: Backlog[Committed] = Backlog("metrics")
    config = MetricsConfig(publish_interval=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_metrics, config, inbox, database, archive, publish)
        # The rebuild runs in a worker thread after the start; wait for its snapshot.
        while not published:
            await trio.sleep(0.01)
        inbox.put(Committed(1, [(None, first)], []))
        await trio.sleep(1)
        inbox.put(Committed(2, [(None, second)], []))
        with trio.fail_after(60):
            while len(published) < 2:
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    # Both commits went into the first snapshot after the one at start,
    # published one interval after it.
    assert published[1]["open"] == 2
    # The clock adds float steps, so allow for rounding in the last place.
    assert times[1] - times[0] >= 10.0 - 1e-9


async def test_actor_rebuilds_on_missed_commit(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    connection = await open_database(database, archive)
    await write_batch(connection, [opened("a"), resolved("a", "2")])

    published: list[dict[str, Any]] = []
    rebuilt = trio.Event()

    def publish(document: dict[str, Any]) -> None:
        published.append(document)
        if document["resolved"] == 2:
            rebuilt.set()

    inbox: Backlog[Committed] = Backlog("metrics")
    config = MetricsConfig(publish_interval=0.0)
    # The real clock: the rebuild runs in a thread, which a mock clock would
    # count as idle time and jump past.
    async with trio.open_nursery() as nursery:
        await nursery.start(run_metrics, config, inbox, database, archive, publish)
        # The notification of this commit never arrives; the next one does.
        await write_batch(connection, [opened("b"), resolved("b", "-1")])
        later = await write_batch(connection, [opened("c")])
        inbox.put(later)
        with trio.fail_after(30):
            await rebuilt.wait()
        nursery.cancel_scope.cancel()
    await connection.close()
    assert published[-1]["realized_pnl"] == 1.0
    assert published[-1]["open"] == 1
