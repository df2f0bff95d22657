"""The logger actor: writes accepted trades and decisions to SQLite.

Writes are group-committed: the logger takes every message that is waiting
(up to ``batch_max``), applies them in one transaction and commits once. Only
then is each message acknowledged and the changed trades passed on to the
actors downstream, so that a trade the bot saw acknowledged is on disk and
every count downstream is of committed data.

Storage is idempotent by trade id and decision id: a message delivered twice,
for instance again after a crash of this actor, leaves the database as once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_anyio
import trio

from actors.messages import Decision, Message, dumps, format_time
from actors.store import TRADE_SELECT, TRADE_UPSERT, open_database
from actors.trades import TradeRecord, apply_trade_message, record_to_row, row_to_record
from supervisor.config import LoggerConfig
from supervisor.mailbox import Mailbox

log = logging.getLogger(__name__)

# SQLite allows 32766 host parameters per statement since 3.32; stay well below.
_IN_CHUNK = 500

DECISION_INSERT = (
    "INSERT OR IGNORE INTO decisions (decision_id, decided_at, strategy, market, action, venue, "
    "side, confidence, probability, signal_type, tags, params, trade_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(eq=False)
class Envelope:
    """An accepted message on its way to the database.

    ``committed`` is set once the transaction that stored it has committed.
    """

    message: Message
    committed: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True, slots=True)
class Committed:
    """What one transaction changed, numbered by the transaction's sequence."""

    seq: int
    # Each changed trade as (state before, state after); before is None for a new trade.
    changes: list[tuple[TradeRecord | None, TradeRecord]]
    decisions: list[Decision]

    @property
    def trades(self) -> list[TradeRecord]:
        return [after for _, after in self.changes]

    @property
    def newly_resolved(self) -> list[TradeRecord]:
        """Trades that this transaction moved to "resolved"."""
        return [
            after
            for before, after in self.changes
            if after.status == "resolved" and (before is None or before.status != "resolved")
        ]


CommitListener = Callable[[Committed], None]


def _decision_row(decision: Decision) -> tuple[object, ...]:
    return (
        decision.decision_id,
        format_time(decision.decided_at),
        decision.strategy,
        decision.market,
        decision.action,
        decision.venue,
        decision.side,
        None if decision.confidence is None else str(decision.confidence),
        None if decision.probability is None else str(decision.probability),
        decision.signal_type,
        json.dumps(list(decision.tags)) if decision.tags else None,
        dumps(dict(decision.params)) if decision.params else None,
        decision.trade_id,
    )


async def _select_in(
    connection: sqlite_anyio.Connection, query: str, ids: Sequence[str]
) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        placeholders = ", ".join("?" for _ in chunk)
        cursor = await connection.execute(query.format(placeholders=placeholders), chunk)
        rows.extend(await cursor.fetchall())
    return rows


async def write_batch(
    connection: sqlite_anyio.Connection, messages: Sequence[Message]
) -> Committed:
    """Store ``messages`` in one transaction; return what changed.

    Raises ``sqlite3.Error`` when the write fails; the transaction is then
    rolled back and nothing of the batch is stored.
    """
    trade_ids = list(dict.fromkeys(m.trade_id for m in messages if not isinstance(m, Decision)))
    decisions = [m for m in messages if isinstance(m, Decision)]

    # BEGIN IMMEDIATE takes the write lock before the reads below, so that the
    # archiver cannot move a trade between our read of it and our write.
    await connection.execute("BEGIN IMMEDIATE")
    committed = False
    try:
        current: dict[str, TradeRecord] = {}
        if trade_ids:
            select = TRADE_SELECT.format(table="trades") + " WHERE trade_id IN ({placeholders})"
            for row in await _select_in(connection, select, trade_ids):
                record = row_to_record(row)
                current[record.trade_id] = record
            archived_query = "SELECT trade_id FROM archive.trades WHERE trade_id IN ({placeholders})"
            archived = {str(row[0]) for row in await _select_in(connection, archived_query, trade_ids)}
        else:
            archived = set()

        original = dict(current)
        changed: dict[str, TradeRecord] = {}
        for message in messages:
            if isinstance(message, Decision):
                continue
            if message.trade_id in archived:
                # An archived trade has ended long ago; a message for it is a
                # late duplicate, and storing it would split the trade in two.
                log.info("logger: ignored %s for archived trade %s", type(message).__name__, message.trade_id)
                continue
            before = current.get(message.trade_id)
            after = apply_trade_message(before, message)
            if after != before:
                current[message.trade_id] = after
                changed[message.trade_id] = after

        if changed:
            cursor = await connection.cursor()
            await cursor.executemany(
                TRADE_UPSERT.format(table="trades"), [record_to_row(r) for r in changed.values()]
            )
        new_decisions: list[Decision] = []
        if decisions:
            existing_query = "SELECT decision_id FROM decisions WHERE decision_id IN ({placeholders})"
            ids = [d.decision_id for d in decisions]
            existing = {str(row[0]) for row in await _select_in(connection, existing_query, ids)}
            seen: set[str] = set()
            for decision in decisions:
                if decision.decision_id not in existing and decision.decision_id not in seen:
                    new_decisions.append(decision)
                    seen.add(decision.decision_id)
            if new_decisions:
                cursor = await connection.cursor()
                await cursor.executemany(DECISION_INSERT, [_decision_row(d) for d in new_decisions])
        cursor = await connection.execute(
            "UPDATE commit_sequence SET seq = seq + 1 RETURNING seq"
        )
        row = await cursor.fetchone()
        assert row is not None
        await connection.commit()
        committed = True
    finally:
        # Roll back on any way out, cancellation included, so that the
        # connection is clean for the next batch; the error still propagates.
        if not committed:
            await connection.rollback()
    changes = [(original.get(trade_id), after) for trade_id, after in changed.items()]
    return Committed(int(row[0]), changes, new_decisions)


async def run_logger(
    config: LoggerConfig,
    inbox: Mailbox[Envelope],
    database: Path,
    archive: Path,
    on_commit: CommitListener,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Take batches from ``inbox``, store them and acknowledge them, forever."""
    connection = await open_database(database, archive)
    try:
        log.info("logger: started on %s", database)
        task_status.started()
        while True:
            batch = await inbox.take_batch(config.batch_max)
            committed = await write_batch(connection, [e.message for e in batch])
            inbox.ack()
            for envelope in batch:
                envelope.committed.set()
            on_commit(committed)
    finally:
        with trio.CancelScope(shield=True):
            await connection.close()
