"""The metrics actor: a live performance snapshot, published when it changes.

The state (``actors.analytics.state.MetricsState``) is incremental: each
committed change costs O(1) for the usual trade, however long the history,
and it never keeps the trades themselves. At start the actor rebuilds the
state from the database and the archive with a lean reader, then applies
every later transaction in commit order. docs/metrics.md defines each figure.

No NaN or Infinity leaves this module: an undefined figure is ``None`` (JSON
null), and the section that holds it names the reason under ``undefined``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from actors.analytics.checkpoint import (
    CheckpointKey,
    checkpoint_path,
    load_checkpoint_sync,
    pickle_state,
    write_checkpoint_sync,
)
from actors.analytics.settings import MetricsSettings
from actors.analytics.state import DecimalCache, MetricsState, facts_from_record, facts_from_row
from actors.logger import Committed
from actors.store import LeanScan, StoreIdentity, read_identity_sync, scan_stored_trades_sync
from actors.trades import TradeRecord
from supervisor.config import MetricsConfig
from supervisor.mailbox import Backlog
from supervisor.supervisor import busy

log = logging.getLogger(__name__)

__all__ = [
    "MetricsState", "RestoredState", "compute_from_records", "load_state_sync", "restore_state_sync", "run_metrics",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _rebuild_order(record: TradeRecord) -> tuple[bool, datetime, str]:
    return (record.resolved_at is None, record.resolved_at or _EPOCH, record.trade_id)


def compute_from_records(
    records: Iterable[TradeRecord], settings: MetricsSettings | None = None
) -> MetricsState:
    """Build the state from scratch out of trade records, in resolution order."""
    state = MetricsState(settings)
    tolerance = state.settings.break_even_tolerance
    bulk = state.start_bulk()
    for record in sorted(records, key=_rebuild_order):
        bulk.add(facts_from_record(record, tolerance))
    bulk.finish()
    return state


def _rebuild_sync(
    database: Path, archive: Path | None, settings: MetricsSettings | None
) -> tuple[LeanScan, MetricsState]:
    state = MetricsState(settings)
    tolerance = state.settings.break_even_tolerance
    bulk = state.start_bulk()

    decimals = DecimalCache()
    add = bulk.add

    def on_trade(row: tuple[Any, ...]) -> None:
        add(facts_from_row(row, tolerance, decimals))

    scan = scan_stored_trades_sync(database, archive, on_trade, lambda row: state.missed.add_hold(*row))
    bulk.finish()
    for action, count in scan.decision_counts.items():
        state.decisions[action] = count
    return scan, state


def load_state_sync(
    database: Path, archive: Path | None, settings: MetricsSettings | None = None
) -> tuple[int, MetricsState]:
    """Rebuild the state from the database and the archive, with its commit sequence."""
    scan, state = _rebuild_sync(database, archive, settings)
    return scan.seq, state


@dataclass
class RestoredState:
    """The state as of commit ``seq``, from a checkpoint or rebuilt from the database."""

    seq: int
    state: MetricsState
    identity: StoreIdentity
    from_checkpoint: bool


def _plausible(state: MetricsState, identity: StoreIdentity, path: Path) -> bool:
    """Check a loaded checkpoint's trade count against the files.

    The header's commit number proves the state current only for files that
    tradepulse alone wrote. The count also catches an archive or database
    file restored from a backup.
    """
    trades = state.trades_seen
    if identity.trades is not None and trades != identity.trades:
        log.warning(
            "metrics: checkpoint %s not used because it counts %s trades and the database files contain %d; "
            "rebuilding from the database", path, trades, identity.trades,
        )
        return False
    return True


def restore_state_sync(
    database: Path, archive: Path | None, settings: MetricsSettings | None = None
) -> RestoredState:
    """Load the state from a valid checkpoint beside ``database``, or else rebuild it.

    A checkpoint is valid only at the database's latest commit, for the same
    database and archive files, code and settings; ``checkpoint.py`` has
    the rules. Either way the result equals a rebuild at ``seq``.
    """
    settings = settings or MetricsSettings.from_config()
    path = checkpoint_path(database)
    if path.exists():
        identity = read_identity_sync(database, archive)
        key = CheckpointKey.current(identity, settings)
        if key is not None:
            state = load_checkpoint_sync(path, key)
            if state is not None and _plausible(state, identity, path):
                return RestoredState(identity.seq, state, identity, True)
    else:
        log.info("metrics: no checkpoint at %s; rebuilding from the database", path)
    scan, state = _rebuild_sync(database, archive, settings)
    identity = StoreIdentity(scan.seq, scan.database_id, scan.archive_id)
    return RestoredState(scan.seq, state, identity, False)


# Time without commits after which the actor writes a due checkpoint
# (seconds), so that a busy actor does not write one that the next
# commit makes stale at once.
CHECKPOINT_QUIET = 1.0

# Maximum time by which writing the checkpoint may delay the actor's stop (seconds).
STOP_CHECKPOINT_TIMEOUT = 10.0


class _Checkpoints:
    """When the metrics actor writes its checkpoint, and the writing itself."""

    def __init__(
        self, path: Path, key: CheckpointKey | None, interval: float, restored: RestoredState
    ) -> None:
        self.path = path
        # None turns writing off: the database has no id, or the code no source.
        self.key = key
        self.interval = interval
        # The commit that the file at ``path`` reflects; None until this actor
        # has loaded or written it.
        self.saved_seq: int | None = restored.seq if restored.from_checkpoint else None
        # After a rebuild the first quiet moment is due, because a rebuild is slow.
        self.saved_at = trio.current_time() if restored.from_checkpoint else -math.inf

    def rebuilt(self) -> None:
        self.saved_at = -math.inf

    def due(self, seq: int, last_commit_at: float) -> float:
        """Return the trio time at which to write a checkpoint of commit ``seq``, or infinity."""
        if self.key is None or self.interval <= 0 or seq == self.saved_seq:
            return math.inf
        return max(self.saved_at + self.interval, last_commit_at + CHECKPOINT_QUIET)

    async def save(self, state: MetricsState, seq: int) -> None:
        """Write ``state`` as of commit ``seq``; a failure is logged and not raised.

        The pickling pauses the event loop, because the state must not change
        meanwhile; the write runs in a worker thread while this task waits.
        """
        if self.key is None or (seq == self.saved_seq and self.path.exists()):
            return
        started = time.perf_counter()
        self.saved_at = trio.current_time()
        try:
            pickled = pickle_state(state)
        except Exception as error:  # noqa: BLE001
            # Whatever pickling raises (an object that cannot be pickled),
            # the state itself is intact and the actor goes on.
            log.error("metrics: cannot pickle the state for checkpoint %s: %r", self.path, error)
            return
        paused = time.perf_counter() - started
        size = pickled.size
        key = dataclasses.replace(self.key, seq=seq)
        # If this task is cancelled, the thread finishes on its own; the
        # state does not change again, because cancellation ends the actor.
        written = await trio.to_thread.run_sync(
            write_checkpoint_sync, self.path, key, pickled, abandon_on_cancel=True
        )
        pickled.release()
        if written:
            self.saved_seq = seq
            log.info(
                "metrics: wrote checkpoint %s (commit %d, %d trades, %.1f MB) in %.2f s, "
                "the event loop paused for %.0f ms",
                self.path, seq, state.trades_seen, size / 1e6, time.perf_counter() - started, paused * 1000,
            )

    async def save_at_stop(self, state: MetricsState, seq: int) -> None:
        """Write the checkpoint while the actor is being cancelled, within ``STOP_CHECKPOINT_TIMEOUT``."""
        with trio.CancelScope(deadline=trio.current_time() + STOP_CHECKPOINT_TIMEOUT, shield=True) as scope:
            await self.save(state, seq)
        if scope.cancelled_caught:
            log.error(
                "metrics: checkpoint %s not written within %.0f s at stop; the next start rebuilds",
                self.path, STOP_CHECKPOINT_TIMEOUT,
            )


async def run_metrics(
    config: MetricsConfig,
    inbox: Backlog[Committed],
    database: Path,
    archive: Path,
    publish: Callable[[dict[str, Any]], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the live snapshot and publish it at most every ``publish_interval`` seconds.

    The state comes from the checkpoint when it is valid, and else from a
    rebuild. A checkpoint is written when the actor is cancelled (a stop, or
    a restart by the supervisor), and every ``checkpoint_interval`` seconds
    once no commit has arrived for ``CHECKPOINT_QUIET`` seconds.
    """
    settings = MetricsSettings.from_config(config)
    # Rebuilding from the database makes a restart exact: every transaction
    # this actor lost in a crash was committed before it was queued. The
    # transactions that the rebuild already saw are skipped by sequence number.
    # Ready before the rebuild, which takes about 40 s per million stored
    # trades: intake and the feed need not wait for it, because commits
    # queue meanwhile and those the rebuild covers are skipped.
    task_status.started()
    restored = await trio.to_thread.run_sync(restore_state_sync, database, archive, settings)
    state = restored.state
    source = "the checkpoint" if restored.from_checkpoint else "the database"
    log.info("metrics: started with %d trades (commit %d) from %s", state.trades_seen, restored.seq, source)
    publish(state.snapshot())

    key = CheckpointKey.current(restored.identity, settings)
    checkpoints = _Checkpoints(checkpoint_path(database), key, config.checkpoint_interval, restored)
    last_seq = restored.seq
    last_commit_at = trio.current_time()

    async def apply_all(batch: list[Committed]) -> bool:
        nonlocal last_seq, last_commit_at, state
        changed = False
        for committed in batch:
            if committed.seq <= last_seq:
                continue
            if committed.seq > last_seq + 1 or committed.resync:
                # A commit never reached this actor (the logger failed between
                # its commit and the notification): the state would be
                # wrong from here on, so rebuild it from the database.
                log.warning(
                    "metrics: missed commits after %d up to %d; rebuilding from the database",
                    last_seq,
                    committed.seq,
                )
                last_seq, state = await trio.to_thread.run_sync(
                    load_state_sync, database, archive, settings
                )
                checkpoints.rebuilt()
                changed = True
                if committed.seq <= last_seq:
                    continue
            for before, after in committed.changes:
                changed |= state.apply_change(before, after)
            for decision in committed.decisions:
                state.apply_decision(decision)
                changed = True
            last_seq = committed.seq
            last_commit_at = trio.current_time()
        return changed

    last_publish = trio.current_time()
    gap = config.publish_interval
    try:
        while True:
            batch: list[Committed] | None = None
            with trio.move_on_at(checkpoints.due(last_seq, last_commit_at)):
                batch = await inbox.take_all()
            if batch is None:
                with busy():
                    await checkpoints.save(state, last_seq)
                continue
            if not await apply_all(batch):
                continue
            # Coalesce: transactions that commit while we wait go into the same snapshot.
            await trio.sleep_until(last_publish + gap)
            await apply_all(inbox.take_nowait())
            started = time.perf_counter()
            publish(state.snapshot())
            # However short the configured interval, building and sending
            # snapshots takes at most about a third of the time, so that a burst
            # of commits cannot starve the feed's clients.
            gap = max(config.publish_interval, 2 * (time.perf_counter() - started))
            last_publish = trio.current_time()
    except trio.Cancelled:
        # Cancellation reaches this task only where it awaits, and there the
        # state reflects exactly the commits up to ``last_seq``. An error of
        # this task's own is not caught: its state may be half changed.
        await checkpoints.save_at_stop(state, last_seq)
        raise
