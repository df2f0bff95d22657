"""The logger actor against a real SQLite file."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import trio

from actors.logger import Committed, Envelope, run_logger, write_batch
from actors.store import SCHEMA_VERSION, load_stored_state_sync, open_database
from helpers import cancelled, decision, fill, marked, opened, resolved
from supervisor.config import LoggerConfig
from supervisor.mailbox import Mailbox


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


async def test_commit_before_acknowledgement(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    inbox: Mailbox[Envelope] = Mailbox("logger", 100)
    commits: list[Committed] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            run_logger, LoggerConfig(), inbox, database, archive, commits.append, print
        )
        envelope = Envelope(opened("t1"))
        await inbox.put(envelope)
        await envelope.committed.wait()
        # At the moment of the acknowledgement the row is readable by another connection.
        assert rows(database, "SELECT trade_id, status FROM trades") == [("t1", "open")]
        nursery.cancel_scope.cancel()
    assert [c.trades[0].trade_id for c in commits if c.trades] == ["t1"]


async def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite")
    cursor = await connection.execute("PRAGMA journal_mode")
    assert (await cursor.fetchone()) == ("wal",)
    await connection.close()
    assert rows(tmp_path / "t.sqlite", "SELECT MAX(version) FROM schema_version") == [(SCHEMA_VERSION,)]


async def test_duplicate_trade_stored_once(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    await write_batch(connection, [opened("t1"), opened("t1")])
    again = await write_batch(connection, [opened("t1")])
    await connection.close()
    assert rows(tmp_path / "t.sqlite", "SELECT COUNT(*) FROM trades") == [(1,)]
    assert again.trades == []


async def test_resolution_updates_row(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    await write_batch(connection, [opened("t1")])
    committed = await write_batch(connection, [resolved("t1", "0.37", exit_price="1")])
    await connection.close()
    stored = rows(tmp_path / "t.sqlite", "SELECT status, pnl, outcome, venue FROM trades")
    assert stored == [("resolved", "0.37", "win", "kalshi")]
    assert [r.trade_id for r in committed.newly_resolved] == ["t1"]


async def test_resolution_before_open(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    await write_batch(connection, [resolved("t1", "-9.6")])
    await write_batch(connection, [opened("t1")])
    await connection.close()
    stored = rows(tmp_path / "t.sqlite", "SELECT status, pnl, venue FROM trades")
    assert stored == [("resolved", "-9.6", "kalshi")]


async def test_cancel_after_resolution_ignored(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    await write_batch(connection, [opened("t1"), resolved("t1", "1"), cancelled("t1")])
    await connection.close()
    assert rows(tmp_path / "t.sqlite", "SELECT status FROM trades") == [("resolved",)]


async def test_decisions_idempotent(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    hold = decision("hold", params={"threshold": 0.7})
    first = await write_batch(connection, [hold, hold])
    second = await write_batch(connection, [hold])
    await connection.close()
    assert len(first.decisions) == 1
    assert second.decisions == []
    assert rows(tmp_path / "t.sqlite", "SELECT action, params FROM decisions") == [
        ("hold", '{"threshold":0.7}')
    ]


async def test_money_stored_exactly(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    messages = []
    for index in range(1000):
        messages += [opened(f"t{index}"), resolved(f"t{index}", "0.01")]
    await write_batch(connection, messages)
    await connection.close()
    stored = load_stored_state_sync(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    assert sum((t.pnl for t in stored.trades if t.pnl is not None), Decimal(0)) == Decimal("10.00")


async def test_commit_sequence_increases(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    first = await write_batch(connection, [opened("t1")])
    second = await write_batch(connection, [opened("t2")])
    await connection.close()
    assert second.seq == first.seq + 1


async def test_unacknowledged_batch_redelivered() -> None:
    inbox: Mailbox[str] = Mailbox("test", 10)
    for item in ("a", "b", "c"):
        await inbox.put(item)
    first = await inbox.take_batch(2)
    again = await inbox.take_batch(2)
    inbox.ack()
    rest = await inbox.take_batch(2)
    assert first == again == ["a", "b"]
    assert rest == ["c"]


async def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    database = tmp_path / "t.sqlite"
    connection = await open_database(database, tmp_path / "a.sqlite")
    await connection.execute("CREATE TRIGGER fail BEFORE INSERT ON decisions BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    await connection.commit()
    try:
        await write_batch(connection, [opened("t1"), decision("hold")])
    except sqlite3.IntegrityError as error:
        assert "disk says no" in str(error)
    else:
        raise AssertionError("the failing write did not raise")
    await connection.close()
    assert rows(database, "SELECT COUNT(*) FROM trades") == [(0,)]


async def test_mark_updates_open_trade(tmp_path: Path) -> None:
    from actors.messages import parse_message

    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    mark = parse_message(
        {"type": "trade_marked", "trade_id": "t1", "price": "0.97", "marked_at": "2026-07-01T12:05:00Z"}
    )
    early = await write_batch(connection, [mark])
    await write_batch(connection, [opened("t1", expected_price="0.95", requested_size="20"), mark])
    await connection.close()
    # A mark that overtook its opening is kept, and the opening fills in the rest.
    assert [record.mark_price for record in early.trades] == [Decimal("0.97")]
    assert rows(tmp_path / "t.sqlite", "SELECT mark_price, expected_price, requested_size FROM trades") == [
        ("0.97", "0.95", "20")
    ]


def test_old_database_gains_columns(tmp_path: Path) -> None:
    import sqlite3 as stdlib

    from actors.store import TRADES_TABLE, open_sync

    path = tmp_path / "old.sqlite"
    connection = stdlib.connect(path)
    old_table = TRADES_TABLE.format(schema="").replace(
        ",\n    mark_price TEXT,\n    expected_price TEXT,\n    requested_size TEXT,\n    fills TEXT,\n    marked_at TEXT", ""
    )
    connection.execute(old_table)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    connection.execute("INSERT INTO schema_version VALUES (2)")
    connection.execute("CREATE TABLE commit_sequence (seq INTEGER NOT NULL)")
    connection.execute("INSERT INTO commit_sequence VALUES (0)")
    connection.commit()
    connection.close()
    open_sync(path).close()
    columns = [row[1] for row in rows(path, "PRAGMA table_info(trades)")]
    assert columns[-5:] == ["mark_price", "expected_price", "requested_size", "fills", "marked_at"]
    assert rows(path, "SELECT MAX(version) FROM schema_version") == [(SCHEMA_VERSION,)]


async def test_binary_fill_in_cents_rejected(tmp_path: Path) -> None:
    connection = await open_database(tmp_path / "t.sqlite", tmp_path / "a.sqlite")
    cents = fill("t1", "f1", "entry", "10", "97")
    committed = await write_batch(connection, [opened("t1"), cents, marked("t1", "0.5")])
    await connection.close()
    error = committed.rejections[1]
    assert error.field == "price"
    assert "binary market" in str(error)
    assert list(committed.rejections) == [1]
    assert rows(tmp_path / "t.sqlite", "SELECT fills, mark_price FROM trades") == [(None, "0.5")]
