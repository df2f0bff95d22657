"""The SQLite schema and the connection settings every actor uses.

The main database contains open and recent trades, decisions and insights; the
archive file holds trades that the archiver moved out. Both have the same
``trades`` table, so that a query over all history is a UNION of the two.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_anyio
import trio

from actors.trades import TRADE_COLUMNS, TradeRecord, row_to_record

SCHEMA_VERSION = 4

# Migrations by the version they produce. A database at version N runs every
# script above N in order, each in its own transaction.
TRADES_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}trades (
    trade_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('open', 'resolved', 'cancelled')),
    venue TEXT,
    market TEXT,
    side TEXT,
    size TEXT,
    entry_price TEXT,
    fees TEXT,
    strategy TEXT,
    opened_at TEXT,
    market_kind TEXT,
    probability TEXT,
    signal_type TEXT,
    tags TEXT,
    exit_price TEXT,
    pnl TEXT,
    outcome TEXT,
    exit_fees TEXT,
    resolved_at TEXT,
    cancelled_at TEXT,
    cancel_reason TEXT,
    mark_price TEXT,
    expected_price TEXT,
    requested_size TEXT,
    fills TEXT,
    marked_at TEXT
)
"""

# Columns added after version 1, for tables created before them.
ADDED_TRADE_COLUMNS = ("mark_price", "expected_price", "requested_size", "fills", "marked_at")

MIGRATIONS: dict[int, list[str]] = {
    1: [
        TRADES_TABLE.format(schema=""),
        "CREATE INDEX IF NOT EXISTS trades_status_resolved ON trades (status, resolved_at)",
        """
        CREATE TABLE IF NOT EXISTS decisions (
            decision_id TEXT PRIMARY KEY,
            decided_at TEXT NOT NULL,
            strategy TEXT NOT NULL,
            market TEXT NOT NULL,
            action TEXT NOT NULL,
            venue TEXT,
            side TEXT,
            confidence TEXT,
            probability TEXT,
            signal_type TEXT,
            tags TEXT,
            params TEXT,
            trade_id TEXT
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS insights (
            insight_id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            model TEXT NOT NULL,
            resolved_count INTEGER NOT NULL,
            insights TEXT NOT NULL,
            parameter_changes TEXT NOT NULL
        )
        """,
        # The logger numbers its transactions. A reader that rebuilds state
        # from the database reads this number in the same transaction, and so
        # can tell which of the logger's later notifications it has seen already.
        "CREATE TABLE IF NOT EXISTS commit_sequence (seq INTEGER NOT NULL)",
        "INSERT INTO commit_sequence (seq) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM commit_sequence)",
    ],
    2: [
        # Messages that made an actor fail repeatedly, kept for inspection and retry.
        """
        CREATE TABLE IF NOT EXISTS dead_letters (
            letter_id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            actor TEXT NOT NULL,
            message TEXT NOT NULL,
            error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            retried_at TEXT
        )
        """,
    ],
    # Versions 3 and 4 add the columns of ADDED_TRADE_COLUMNS (4: the fills
    # after a trade's opening and the time of its mark); see _add_trade_columns.
    3: [],
    4: [],
}

# A random id that a database file gets when it is first opened for writing,
# outside the numbered migrations because it changes no data. A file derived
# from the database (the metrics checkpoint) stores the id, and so can tell
# the database from another one created later at the same path.
IDENTITY_TABLE = "CREATE TABLE IF NOT EXISTS {schema}database_identity (database_id TEXT NOT NULL)"
IDENTITY_INSERT = (
    "INSERT INTO {schema}database_identity (database_id) SELECT lower(hex(randomblob(16))) "
    "WHERE NOT EXISTS (SELECT 1 FROM {schema}database_identity)"
)

TRADE_SELECT = f"SELECT {', '.join(TRADE_COLUMNS)} FROM {{table}}"
TRADE_UPSERT = (
    f"INSERT OR REPLACE INTO {{table}} ({', '.join(TRADE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in TRADE_COLUMNS)})"
)


class DatabaseError(Exception):
    """A database file cannot be opened or has an unexpected schema."""


PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # NORMAL in WAL mode keeps every committed transaction across a process
    # crash; only a power loss can undo the last commits.
    "PRAGMA synchronous=NORMAL",
    # Several actors write (logger, archiver, reflection); wait for the lock
    # instead of failing at once (milliseconds).
    "PRAGMA busy_timeout=5000",
)


def _check_path(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise DatabaseError(f"cannot open database {path}: it is a directory")
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DatabaseError(
                f"cannot create folder {path.parent} for the database: {error.strerror}"
            ) from None


def _add_trade_columns(connection: sqlite3.Connection, schema: str) -> None:
    """Add the trade columns that a table created by an older version lacks."""
    present = {row[1] for row in connection.execute(f"PRAGMA {schema}.table_info(trades)")}
    for column in ADDED_TRADE_COLUMNS:
        if column not in present:
            connection.execute(f"ALTER TABLE {schema}.trades ADD COLUMN {column} TEXT")


def migrate_sync(connection: sqlite3.Connection, path: Path, *, check_writable: bool = True) -> None:
    """Bring the schema of an open stdlib connection to ``SCHEMA_VERSION``."""
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"database {path} has schema version {version}, newer than this "
                f"tradepulse supports ({SCHEMA_VERSION}); upgrade tradepulse"
            )
        for target in sorted(MIGRATIONS):
            if target <= version:
                continue
            for statement in MIGRATIONS[target]:
                connection.execute(statement)
            if target in (3, 4):
                _add_trade_columns(connection, "main")
            connection.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
        if check_writable:
            # A write that changes nothing: a read-only file or folder fails
            # here, at start, and not on the first trade.
            connection.execute("UPDATE commit_sequence SET seq = seq")
            connection.execute(IDENTITY_TABLE.format(schema=""))
            connection.execute(IDENTITY_INSERT.format(schema=""))
        connection.commit()
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot open database {path} for writing: {error}") from None


def open_sync(path: Path, *, check_writable: bool = True) -> sqlite3.Connection:
    """Open ``path`` with the stdlib driver, migrated, for commands and tests.

    Readers pass ``check_writable=False`` so that a report works on a
    database they may only read.
    """
    _check_path(path)
    try:
        connection = sqlite3.connect(path)
        for pragma in PRAGMAS:
            connection.execute(pragma)
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot open database {path}: {error}") from None
    migrate_sync(connection, path, check_writable=check_writable)
    return connection


def prepare_archive_sync(path: Path) -> None:
    """Create the archive file, its ``trades`` table and its index if missing."""
    _check_path(path)
    try:
        connection = sqlite3.connect(path)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(TRADES_TABLE.format(schema=""))
            _add_trade_columns(connection, "main")
            # The main file's index, so that the latest archived trades are
            # read without a scan. Building it over an archive of a million
            # trades took about 1.4 s on a 2-core machine, once per archive.
            connection.execute(
                "CREATE INDEX IF NOT EXISTS trades_status_resolved ON trades (status, resolved_at)"
            )
            connection.execute(IDENTITY_TABLE.format(schema=""))
            connection.execute(IDENTITY_INSERT.format(schema=""))
            connection.commit()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot open archive database {path}: {error}") from None


async def open_database(
    path: Path, archive: Path | None = None, *, busy_timeout_ms: int = 5000
) -> sqlite_anyio.Connection:
    """Open the main database through sqlite-anyio, migrated, with WAL on.

    With ``archive``, the archive file is attached as schema ``archive``.
    """
    # The migration runs on a short-lived stdlib connection: it is quick, and it
    # must finish before any actor touches the tables.
    await trio.to_thread.run_sync(lambda: open_sync(path).close())
    try:
        connection = await sqlite_anyio.connect(str(path))
        for pragma in PRAGMAS:
            await connection.execute(pragma)
        await connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if archive is not None:
            await connection.execute("ATTACH DATABASE ? AS archive", (str(archive),))
            await connection.execute(TRADES_TABLE.format(schema="archive."))
            await connection.execute(IDENTITY_TABLE.format(schema="archive."))
            await connection.execute(IDENTITY_INSERT.format(schema="archive."))
            await connection.commit()
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot open database {path}: {error}") from None
    return connection


def _open_reader(path: Path, archive: Path | None) -> tuple[sqlite3.Connection, bool]:
    """Open ``path`` for reading with the archive attached when it exists."""
    connection = open_sync(path, check_writable=False)
    if archive is not None and archive.exists():
        connection.execute("ATTACH DATABASE ? AS archive", (str(archive),))
        return connection, True
    return connection, False


@dataclass(frozen=True)
class StoreIdentity:
    """The latest commit sequence number and the ids of the database and the archive."""

    seq: int
    # None for a file never opened for writing since ids were introduced,
    # and for an archive file that does not exist.
    database_id: str | None
    archive_id: str | None
    # Rows in the trades tables of both files; a trade that a move cut short
    # counts twice.
    trades: int | None = None


def _database_id(connection: sqlite3.Connection, schema: str) -> str | None:
    try:
        row = connection.execute(f"SELECT database_id FROM {schema}.database_identity").fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return None
        raise
    return None if row is None else str(row[0])


def _identity(connection: sqlite3.Connection, has_archive: bool) -> StoreIdentity:
    """Read the identity inside the caller's read transaction."""
    seq = connection.execute("SELECT seq FROM commit_sequence").fetchone()[0]
    database_id = _database_id(connection, "main")
    archive_id = _database_id(connection, "archive") if has_archive else None
    trades = connection.execute("SELECT COUNT(*) FROM main.trades").fetchone()[0]
    if has_archive:
        trades += connection.execute("SELECT COUNT(*) FROM archive.trades").fetchone()[0]
    return StoreIdentity(int(seq), database_id, archive_id, int(trades))


def read_identity_sync(path: Path, archive: Path | None) -> StoreIdentity:
    """Read the commit sequence number and both files' ids in one read transaction."""
    connection, has_archive = _open_reader(path, archive)
    try:
        connection.execute("BEGIN")
        identity = _identity(connection, has_archive)
        connection.execute("COMMIT")
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot read the commit sequence of {path}: {error}") from None
    finally:
        connection.close()
    return identity


@dataclass
class StoredState:
    """Every stored trade and the decision counts, as of commit ``seq``."""

    seq: int
    trades: list[TradeRecord]
    decision_counts: dict[str, int]


def load_stored_state_sync(path: Path, archive: Path | None) -> StoredState:
    """Read every trade, archived ones included, with the decision counts.

    Everything is read in one read transaction together with the commit
    sequence number. The main database is read before the archive: the
    archiver copies a trade into the archive before it deletes it from the
    main database, so this order reads every trade at least once, and a trade
    seen in both places is counted once.
    """
    connection, has_archive = _open_reader(path, archive)
    try:
        connection.execute("BEGIN")
        seq = connection.execute("SELECT seq FROM commit_sequence").fetchone()[0]
        records = {
            record.trade_id: record
            for record in map(row_to_record, connection.execute(TRADE_SELECT.format(table="trades")))
        }
        counts = dict(connection.execute("SELECT action, COUNT(*) FROM decisions GROUP BY action"))
        if has_archive:
            for row in connection.execute(TRADE_SELECT.format(table="archive.trades")):
                record = row_to_record(row)
                records.setdefault(record.trade_id, record)
        connection.execute("COMMIT")
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot read trades from {path}: {error}") from None
    finally:
        connection.close()
    return StoredState(int(seq), list(records.values()), counts)


# ---------------------------------------------------------------------------
# A lean reader for rebuilding the metrics over all history.


# unixepoch() (SQLite 3.38) returns the integer that strftime('%s') returns
# as text, a little faster.
if sqlite3.sqlite_version_info >= (3, 38, 0):
    _EPOCH_SECONDS = "unixepoch({})"
else:
    _EPOCH_SECONDS = "CAST(strftime('%s', {}) AS INTEGER)"


def _epoch_us(column: str) -> str:
    # Times are stored as fixed-width "YYYY-MM-DDTHH:MM:SS.ffffffZ" text, so
    # whole seconds plus the six fraction digits give exact microseconds. The
    # seconds are read without the fraction, because SQLite rounds a time to
    # milliseconds and would turn .9995 s and later into the next second. A
    # NULL time gives NULL.
    seconds = _EPOCH_SECONDS.format(f"substr({column}, 1, 19)")
    return f"{seconds} * 1000000 + CAST(substr({column}, 21, 6) AS INTEGER)"


# Columns that the metrics read when the ``trades`` table has them: the
# latest price of an open position, the price the bot expected, the size it
# requested and the fills after the opening. A table without them reads NULL.
OPTIONAL_TRADE_COLUMNS = ("mark_price", "expected_price", "requested_size", "fills")

# The columns of each row that ``scan_stored_trades_sync`` passes on, in order.
LEAN_TRADE_COLUMNS = (
    "trade_id", "status", "strategy", "venue", "market", "side", "market_kind",
    "signal_type", "tags", "size", "entry_price", "fees", "exit_fees", "pnl", "outcome",
    "probability", "exit_price", "opened_us", "resolved_us", *OPTIONAL_TRADE_COLUMNS,
)


def _lean_select(connection: sqlite3.Connection, schema: str) -> str:
    present = {row[1] for row in connection.execute(f"PRAGMA {schema}.table_info(trades)")}
    optional = ", ".join(name if name in present else "NULL" for name in OPTIONAL_TRADE_COLUMNS)
    return (
        "SELECT trade_id, status, strategy, venue, market, side, market_kind, signal_type, tags, "
        "size, entry_price, fees, exit_fees, pnl, outcome, probability, exit_price, "
        f"{_epoch_us('opened_at')}, {_epoch_us('resolved_at')}, {optional} FROM {schema}.trades"
    )


@dataclass
class LeanScan:
    """The commit sequence, decision counts and file ids read by ``scan_stored_trades_sync``."""

    seq: int
    decision_counts: dict[str, int]
    database_id: str | None = None
    archive_id: str | None = None


def scan_stored_trades_sync(
    path: Path,
    archive: Path | None,
    on_trade: Callable[[tuple[Any, ...]], None],
    on_hold: Callable[[tuple[Any, ...]], None],
) -> LeanScan:
    """Pass every stored trade and HOLD decision to the callbacks, without building records.

    Each trade reaches ``on_trade`` once as a row of ``LEAN_TRADE_COLUMNS``,
    Decimals still as text and times as integer epoch microseconds. Resolved
    trades come first, those of the archive and then those of the main file,
    each in resolution time order; then the others. Each HOLD
    decision reaches ``on_hold`` as (market, side, params price, params size).
    Everything is read in one read transaction with the commit sequence
    number, the main database before the archive, and a trade present in both
    files (a move cut short) is passed once.
    """
    connection, has_archive = _open_reader(path, archive)
    try:
        connection.execute("BEGIN")
        identity = _identity(connection, has_archive)
        counts = dict(connection.execute("SELECT action, COUNT(*) FROM decisions GROUP BY action"))

        main_select = _lean_select(connection, "main")
        resolved = " WHERE status = 'resolved' ORDER BY resolved_at"
        others = " WHERE status != 'resolved'"
        if has_archive:
            # Archived trades are the older ones, so reading them first keeps
            # the resolutions nearly in time order for the caller.
            archived = _lean_select(connection, "archive") + (
                " WHERE trade_id NOT IN (SELECT trade_id FROM main.trades)"
            )
            for row in connection.execute(archived + " AND status = 'resolved' ORDER BY resolved_at"):
                on_trade(row)
        for row in connection.execute(main_select + resolved):
            on_trade(row)
        for row in connection.execute(main_select + others):
            on_trade(row)
        if has_archive:
            for row in connection.execute(archived + " AND status != 'resolved'"):
                on_trade(row)

        holds = connection.execute(
            "SELECT market, side, json_extract(params, '$.price'), json_extract(params, '$.size') "
            "FROM decisions WHERE action = 'hold'"
        )
        for row in holds:
            on_hold(row)
        connection.execute("COMMIT")
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot read trades from {path}: {error}") from None
    finally:
        connection.close()
    return LeanScan(identity.seq, counts, identity.database_id, identity.archive_id)


# ---------------------------------------------------------------------------
# The latest trades, for the per-trade table of ``tradepulse report``.

# The column that places a trade of each status in the table: a trade is
# placed at its end, or at its opening while it is open.
_LATEST_ORDER_COLUMNS = (
    ("resolved", "resolved_at"), ("cancelled", "cancelled_at"), ("open", "opened_at"),
)

# The largest LIMIT that SQLite accepts (a signed 64-bit integer).
_SQLITE_MAX_LIMIT = 2**63 - 1


@dataclass
class LatestTrade:
    """One trade read by ``read_latest_trades_sync``."""

    # A row of LEAN_TRADE_COLUMNS, as ``scan_stored_trades_sync`` passes it.
    row: tuple[Any, ...]
    # The resolution or cancellation time in epoch microseconds, or None while open.
    ended_us: int | None
    # True when the row was read from the archive file.
    archived: bool


@dataclass
class LatestTrades:
    """The trades read by ``read_latest_trades_sync``, oldest first, as of commit ``seq``."""

    seq: int
    trades: list[LatestTrade]


def _latest_select(connection: sqlite3.Connection, schema: str, column: str) -> str:
    """Return a query for the latest trades of one status, by ``column``.

    Each row is a lean row followed by ``column`` in epoch microseconds. The
    inner query picks the rows through ORDER BY ... LIMIT, so that an
    index on (status, column) reads only the rows it returns. The join then
    reads each picked row's lean columns by primary key.
    """
    excluded = ""
    if schema == "archive":
        excluded = " AND trade_id NOT IN (SELECT trade_id FROM main.trades)"
    return (
        f"SELECT lean.*, {_epoch_us('picked.picked_at')} FROM ("
        f"SELECT trade_id AS picked_id, {column} AS picked_at FROM {schema}.trades "
        f"WHERE status = ?{excluded} ORDER BY {column} DESC, trade_id DESC LIMIT ?"
        f") AS picked JOIN ({_lean_select(connection, schema)}) AS lean "
        "ON lean.trade_id = picked.picked_id"
    )


def read_latest_trades_sync(path: Path, archive: Path | None, limit: int) -> LatestTrades:
    """Read the ``limit`` latest trades by end time, archived ones included, oldest first.

    A resolved or cancelled trade is placed at its resolution or cancellation
    time, and an open trade at its opening time. Equal times are ordered by
    trade id. Each status and file is one ORDER BY ... LIMIT query, so that the
    index on (status, resolved_at) reads only the resolved trades returned.
    Cancelled and open trades are sorted after a search of that index by
    status, so their cost grows with their number. NOTE: an archive that no
    archiver has opened since the index was added has none, and is scanned.

    Everything is read in one read transaction with the commit sequence
    number, the main database before the archive. A trade present in both
    files (a move cut short) is read from the main file, as in
    ``scan_stored_trades_sync``.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    limit = min(limit, _SQLITE_MAX_LIMIT)
    connection, has_archive = _open_reader(path, archive)
    # Each candidate with its sort key (time, trade id). A row without the
    # time comes first, as NULL sorts last in the descending queries.
    candidates: list[tuple[tuple[int, str], LatestTrade]] = []
    try:
        connection.execute("BEGIN")
        seq = connection.execute("SELECT seq FROM commit_sequence").fetchone()[0]
        schemas = ("main", "archive") if has_archive else ("main",)
        for schema in schemas:
            for status, column in _LATEST_ORDER_COLUMNS:
                query = _latest_select(connection, schema, column)
                for *row, time_us in connection.execute(query, (status, limit)):
                    ended_us = None if status == "open" else time_us
                    trade = LatestTrade(tuple(row), ended_us, schema == "archive")
                    candidates.append(((-1 if time_us is None else time_us, str(row[0])), trade))
        connection.execute("COMMIT")
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot read trades from {path}: {error}") from None
    finally:
        connection.close()
    candidates.sort(key=lambda candidate: candidate[0])
    return LatestTrades(int(seq), [trade for _, trade in candidates[-limit:]])
