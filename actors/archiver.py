"""The archiver actor: moves old ended trades into the archive file.

A trade that was resolved or cancelled longer than ``retention_days`` ago is
copied into the archive and deleted from the main database, one chunk per
transaction. The move is idempotent, so a crash at any point neither loses nor
duplicates a trade:

- The copy is ``INSERT OR REPLACE``: while a trade is still in the main
  database, that copy is the truth, and a rerun overwrites an older archive copy.
- SQLite commits a transaction that spans an attached file atomically per file
  only. A crash can therefore leave a trade in both files, never in neither;
  readers take the main copy, and the next run finishes the move.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlite_anyio
import trio

from actors.messages import format_time
from actors.store import TRADE_COLUMNS, open_database, prepare_archive_sync
from supervisor.config import ArchiverConfig
from supervisor.supervisor import busy

log = logging.getLogger(__name__)

_COLUMNS = ", ".join(TRADE_COLUMNS)


async def archive_once(
    connection: sqlite_anyio.Connection, retention_days: float, chunk_size: int, now: datetime
) -> int:
    """Move every trade that ended before ``now - retention_days``; return how many."""
    cutoff = format_time(now - timedelta(days=retention_days))
    moved = 0
    while True:
        # BEGIN IMMEDIATE holds the write lock from the select to the commit, so
        # that the logger cannot change a trade between its copy and its delete.
        await connection.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            cursor = await connection.execute(
                "SELECT trade_id FROM trades WHERE status != 'open' "
                "AND COALESCE(resolved_at, cancelled_at) < ? "
                "ORDER BY COALESCE(resolved_at, cancelled_at) LIMIT ?",
                (cutoff, chunk_size),
            )
            ids = [str(row[0]) for row in await cursor.fetchall()]
            if ids:
                placeholders = ", ".join("?" for _ in ids)
                await connection.execute(
                    f"INSERT OR REPLACE INTO archive.trades ({_COLUMNS}) "
                    f"SELECT {_COLUMNS} FROM main.trades WHERE trade_id IN ({placeholders})",
                    ids,
                )
                await connection.execute(
                    f"DELETE FROM main.trades WHERE trade_id IN ({placeholders})", ids
                )
            await connection.commit()
            committed = True
        finally:
            if not committed:
                await connection.rollback()
        if not ids:
            return moved
        moved += len(ids)
        log.info("archiver: moved %d trades (%d in this run)", len(ids), moved)


async def run_archiver(
    config: ArchiverConfig,
    database: Path,
    archive: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Archive once at start, then every ``config.interval`` seconds."""
    await trio.to_thread.run_sync(prepare_archive_sync, archive)
    connection = await open_database(database, archive)
    try:
        log.info(
            "archiver: started; trades ended over %s days ago move to %s every %s s",
            config.retention_days,
            archive,
            config.interval,
        )
        task_status.started()
        while True:
            with busy():
                moved = await archive_once(
                    connection, config.retention_days, config.chunk_size, datetime.now(UTC)
                )
            if moved:
                log.info("archiver: run finished, %d trades moved", moved)
            await trio.sleep(config.interval)
    finally:
        with trio.CancelScope(shield=True):
            await connection.close()
