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
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlite_anyio
import trio

from actors.journal import Journal
from actors.messages import Decision, InvalidMessage, Message, dumps, format_time, message_to_dict
from actors.store import TRADE_SELECT, TRADE_UPSERT, open_database
from actors.trades import (
    TradeRecord,
    apply_trade_message,
    check_against,
    record_to_row,
    row_to_record,
)
from supervisor.config import LoggerConfig
from supervisor.faults import check_poison, fault_point
from supervisor.mailbox import Mailbox
from supervisor.supervisor import busy

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

    ``committed`` is set once the message is durable: committed to the
    database, appended to the fallback journal, or set aside as a dead letter.
    """

    message: Message
    committed: trio.Event = field(default_factory=trio.Event)
    # Failures of batches that contained it; after one, it is written alone.
    batch_failures: int = 0
    # Failures while it was written alone, and the last error of any failure.
    attempts: int = 0
    last_error: str | None = None
    # Set once a transaction holding it has committed, even if the logger
    # failed before acknowledging it.
    stored: bool = False
    # Set when the stored trade shows the message to be wrong (a price in
    # cents for a binary market); the message was not applied.
    rejection: InvalidMessage | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """The changes of one transaction, numbered by the transaction's sequence."""

    seq: int
    # Each changed trade as (state before, state after); before is None for a new trade.
    changes: list[tuple[TradeRecord | None, TradeRecord]]
    decisions: list[Decision]
    # True for the logger's announcement at start, which carries no changes:
    # a consumer that has not seen ``seq`` yet missed a commit and must rebuild.
    resync: bool = False
    # Messages of the batch, by index, that the stored trade showed to be wrong.
    rejections: dict[int, InvalidMessage] = field(default_factory=dict)

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

# Called with a one-line text when the database fails or recovers, or a
# message becomes a dead letter.
AlertListener = Callable[[str], None]


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
        # Trades found only in the archive stay there when they change, so
        # that a trade never exists in both files.
        archived: set[str] = set()
        if trade_ids:
            select = TRADE_SELECT.format(table="main.trades") + " WHERE trade_id IN ({placeholders})"
            for row in await _select_in(connection, select, trade_ids):
                record = row_to_record(row)
                current[record.trade_id] = record
            missing = [trade_id for trade_id in trade_ids if trade_id not in current]
            if missing:
                select = TRADE_SELECT.format(table="archive.trades") + " WHERE trade_id IN ({placeholders})"
                for row in await _select_in(connection, select, missing):
                    record = row_to_record(row)
                    current[record.trade_id] = record
                    archived.add(record.trade_id)

        original = dict(current)
        changed: dict[str, TradeRecord] = {}
        rejections: dict[int, InvalidMessage] = {}
        for index, message in enumerate(messages):
            if isinstance(message, Decision):
                continue
            before = current.get(message.trade_id)
            try:
                check_against(before, message)
            except InvalidMessage as error:
                rejections[index] = error
                continue
            after = apply_trade_message(before, message)
            if after != before:
                current[message.trade_id] = after
                changed[message.trade_id] = after

        for table, records in (
            ("main.trades", [r for r in changed.values() if r.trade_id not in archived]),
            ("archive.trades", [r for r in changed.values() if r.trade_id in archived]),
        ):
            if records:
                cursor = await connection.cursor()
                await cursor.executemany(
                    TRADE_UPSERT.format(table=table), [record_to_row(r) for r in records]
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
    return Committed(int(row[0]), changes, new_decisions, rejections=rejections)


def _is_storage_failure(error: Exception) -> bool:
    """Return True for errors of the database itself rather than of a message.

    Disk full, a lock held too long, a read-only file and I/O errors are
    ``OperationalError``; they fail every message alike, so they send the batch
    to the journal instead of counting against the message.
    """
    return isinstance(error, sqlite3.OperationalError)


async def _write_dead_letter(
    connection: sqlite_anyio.Connection, envelope: Envelope, error: str
) -> None:
    await connection.execute(
        "INSERT INTO dead_letters (created_at, actor, message, error, attempts) VALUES (?, ?, ?, ?, ?)",
        (
            format_time(datetime.now(UTC)),
            "logger",
            dumps(message_to_dict(envelope.message)),
            error,
            envelope.attempts + min(envelope.batch_failures, 1),
        ),
    )
    await connection.commit()


class _Logger:
    """One incarnation of the logger actor."""

    def __init__(
        self,
        config: LoggerConfig,
        inbox: Mailbox[Envelope],
        connection: sqlite_anyio.Connection,
        journal: Journal,
        on_commit: CommitListener,
        on_alert: AlertListener,
    ) -> None:
        self.config = config
        self.inbox = inbox
        self.connection = connection
        self.journal = journal
        self.on_commit = on_commit
        self.on_alert = on_alert
        self.outage = False

    async def store(
        self, messages: Sequence[Message], envelopes: Sequence[Envelope] = ()
    ) -> Committed:
        committed = await write_batch(self.connection, messages)
        for envelope in envelopes:
            envelope.stored = True
        for index, error in committed.rejections.items():
            message = messages[index]
            if envelopes:
                envelopes[index].rejection = error
            log.warning("logger: rejected %s for trade %s: %s", type(message).__name__, message.key, error)
        # A crash here leaves the batch committed but unacknowledged; it is
        # delivered again and the idempotent write changes nothing.
        fault_point("logger.after_commit")
        self.on_commit(committed)
        return committed

    async def replay_journal(self) -> bool:
        """Move journaled messages into the database; return True when the journal is empty."""
        if not await trio.to_thread.run_sync(self.journal.pending):
            return True
        messages = await trio.to_thread.run_sync(self.journal.read)
        try:
            for start in range(0, len(messages), self.config.batch_max):
                await self.store(messages[start : start + self.config.batch_max])
        except sqlite3.OperationalError:
            return False
        await trio.to_thread.run_sync(self.journal.clear)
        log.warning("logger: database writable again; %d journaled messages stored", len(messages))
        self.outage = False
        self.on_alert(f"database writable again; {len(messages)} journaled messages stored")
        return True

    async def to_journal(self, batch: Sequence[Envelope], error: Exception | None) -> None:
        # OSError propagates: with neither the database nor the journal
        # writable, the batch stays unacknowledged and the actor restarts.
        await trio.to_thread.run_sync(self.journal.append, [e.message for e in batch])
        if not self.outage:
            self.outage = True
            log.error(
                "logger: cannot write the database (%s); accepted messages go to the journal %s",
                error,
                self.journal.path,
            )
            self.on_alert(f"database write failed ({error}); trades are kept in the journal")
        self.acknowledge(batch)

    def acknowledge(self, batch: Sequence[Envelope]) -> None:
        self.inbox.ack()
        for envelope in batch:
            envelope.committed.set()

    async def handle(self, batch: list[Envelope]) -> None:
        pending = [e for e in batch if not e.committed.is_set()]
        if not await self.replay_journal():
            await self.to_journal(pending, None)
            return

        if any(e.batch_failures or e.attempts for e in pending):
            # This batch crashed the logger before. Write its messages one at a
            # time, so that only the message at fault is retried and, after
            # max_attempts, set aside as a dead letter.
            for envelope in pending:
                await self.handle_one(envelope)
            self.acknowledge(batch)
            return

        try:
            for envelope in pending:
                check_poison(envelope.message.key)
            await self.store([e.message for e in pending], pending)
        except Exception as error:
            if _is_storage_failure(error):
                await self.to_journal(pending, error)
                return
            # The failure counts against no message yet, because any of the
            # batch may be at fault; a kill or cancellation from outside never
            # lands here.
            for envelope in pending:
                if not envelope.stored:
                    envelope.batch_failures += 1
                    envelope.last_error = describe_error(error)
            raise
        self.acknowledge(batch)

    async def handle_one(self, envelope: Envelope) -> None:
        if envelope.committed.is_set():
            return
        if envelope.stored:
            # Committed before a crash that came after the write.
            envelope.committed.set()
            return
        # A batch failure counts once: the message may have caused it. At least
        # one failure while written alone proves it is at fault.
        failures = envelope.attempts + min(envelope.batch_failures, 1)
        if envelope.attempts and failures >= self.config.max_attempts:
            error = envelope.last_error or "unknown error"
            await _write_dead_letter(self.connection, envelope, error)
            log.error(
                "logger: message %s failed %d times; moved to dead letters: %s",
                envelope.message.key,
                failures,
                error,
            )
            self.on_alert(f"message {envelope.message.key} moved to dead letters: {error}")
            envelope.committed.set()
            return
        try:
            check_poison(envelope.message.key)
            await self.store([envelope.message], [envelope])
        except Exception as error:
            if _is_storage_failure(error):
                await trio.to_thread.run_sync(self.journal.append, [envelope.message])
                envelope.committed.set()
                return
            if not envelope.stored:
                envelope.attempts += 1
                envelope.last_error = describe_error(error)
            raise
        envelope.committed.set()


def describe_error(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def run_logger(
    config: LoggerConfig,
    inbox: Mailbox[Envelope],
    database: Path,
    archive: Path,
    on_commit: CommitListener,
    on_alert: AlertListener,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Take batches from ``inbox``, store them and acknowledge them, forever."""
    connection = await open_database(database, archive, busy_timeout_ms=config.busy_timeout_ms)
    journal = Journal(config.journal_path(database))
    logger = _Logger(config, inbox, connection, journal, on_commit, on_alert)
    try:
        # Announce the latest commit. If the previous incarnation failed
        # between a commit and its notification, downstream detects the gap now
        # instead of at the next commit, which may never come.
        cursor = await connection.execute("SELECT seq FROM commit_sequence")
        rows = await cursor.fetchall()
        await cursor.close()
        seq = int(rows[0][0])
        on_commit(Committed(seq, [], [], resync=True))
        log.info("logger: started on %s at commit %d", database, seq)
        task_status.started()
        while True:
            batch: list[Envelope] | None = None
            # While the journal contains messages, wake up now and then to retry
            # the database even if no new message arrives.
            with trio.move_on_after(config.journal_retry if logger.outage else float("inf")):
                batch = await inbox.take_batch(config.batch_max)
            with busy():
                if batch is None:
                    await logger.replay_journal()
                else:
                    await logger.handle(batch)
    finally:
        with trio.CancelScope(shield=True):
            await connection.close()
