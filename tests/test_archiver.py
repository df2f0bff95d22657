"""The archiver moves old ended trades and keeps them in the metrics."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from actors.archiver import archive_once
from actors.logger import write_batch
from actors.metrics import load_state_sync
from actors.store import open_database, prepare_archive_sync
from helpers import BASE_TIME, opened, resolved


def count(path: Path, query: str = "SELECT COUNT(*) FROM trades") -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute(query).fetchone()[0])
    finally:
        connection.close()


async def seed(database: Path, archive: Path, trades: int) -> None:
    prepare_archive_sync(archive)
    connection = await open_database(database, archive)
    messages = []
    for index in range(trades):
        messages += [opened(f"t{index}", minute=index), resolved(f"t{index}", "1", minute=index + 1)]
    messages.append(opened("still-open"))
    await write_batch(connection, messages)
    await connection.close()


async def test_moves_old_trades_in_chunks(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    await seed(database, archive, 25)
    connection = await open_database(database, archive)
    moved = await archive_once(connection, 1.0, 10, BASE_TIME + timedelta(days=2))
    await connection.close()
    assert moved == 25
    assert count(archive) == 25
    # The open trade stays, however old.
    assert count(database) == 1


async def test_recent_trades_stay(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    await seed(database, archive, 5)
    connection = await open_database(database, archive)
    moved = await archive_once(connection, 90.0, 10, BASE_TIME + timedelta(days=2))
    await connection.close()
    assert moved == 0
    assert count(database) == 6


async def test_metrics_include_archive(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    await seed(database, archive, 8)
    _, before = load_state_sync(database, archive)
    connection = await open_database(database, archive)
    await archive_once(connection, 1.0, 3, BASE_TIME + timedelta(days=2))
    await connection.close()
    _, after = load_state_sync(database, archive)
    left, right = before.snapshot(), after.snapshot()
    left.pop("generated_at")
    right.pop("generated_at")
    assert left == right
    assert right["resolved"] == 8


async def test_half_done_move_finishes(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    await seed(database, archive, 4)
    # A crash between the commit of the archive file and that of the main file
    # leaves the trade in both; readers count it once.
    connection = sqlite3.connect(database)
    connection.execute("ATTACH DATABASE ? AS archive", (str(archive),))
    connection.execute("INSERT INTO archive.trades SELECT * FROM main.trades WHERE trade_id = 't0'")
    connection.commit()
    connection.close()
    _, state = load_state_sync(database, archive)
    assert state.snapshot()["resolved"] == 4

    connection = await open_database(database, archive)
    await archive_once(connection, 1.0, 10, BASE_TIME + timedelta(days=2))
    await connection.close()
    assert count(archive) == 4
    assert count(database) == 1


async def test_late_message_updates_archive(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    await seed(database, archive, 2)
    connection = await open_database(database, archive)
    await archive_once(connection, 1.0, 10, BASE_TIME + timedelta(days=2))
    committed = await write_batch(connection, [resolved("t0", "2")])
    await connection.close()
    assert [record.pnl for record in committed.trades] == [Decimal("2")]
    assert count(database, "SELECT COUNT(*) FROM trades WHERE trade_id = 't0'") == 0
    assert count(archive, "SELECT COUNT(*) FROM trades WHERE trade_id = 't0' AND pnl = '2'") == 1
