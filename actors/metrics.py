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

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from actors.analytics.settings import MetricsSettings
from actors.analytics.state import DecimalCache, MetricsState, facts_from_record, facts_from_row
from actors.logger import Committed
from actors.store import scan_stored_trades_sync
from actors.trades import TradeRecord
from supervisor.config import MetricsConfig
from supervisor.mailbox import Backlog

log = logging.getLogger(__name__)

__all__ = ["MetricsState", "compute_from_records", "load_state_sync", "run_metrics"]

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


def load_state_sync(
    database: Path, archive: Path | None, settings: MetricsSettings | None = None
) -> tuple[int, MetricsState]:
    """Rebuild the state from the database and the archive, with its commit sequence."""
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
    return scan.seq, state


async def run_metrics(
    config: MetricsConfig,
    inbox: Backlog[Committed],
    database: Path,
    archive: Path,
    publish: Callable[[dict[str, Any]], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the live snapshot and publish it at most every ``publish_interval`` seconds."""
    settings = MetricsSettings.from_config(config)
    # Rebuilding from the database makes a restart exact: every transaction
    # this actor lost in a crash was committed before it was queued. The
    # transactions that the rebuild already saw are skipped by sequence number.
    # Ready before the rebuild, which takes about 50 s per million stored
    # trades: intake and the feed need not wait for it, because commits
    # queue meanwhile and those the rebuild covers are skipped.
    task_status.started()
    loaded_seq, state = await trio.to_thread.run_sync(load_state_sync, database, archive, settings)
    log.info("metrics: started with %d trades (commit %d)", state.trades_seen, loaded_seq)
    publish(state.snapshot())

    last_seq = loaded_seq

    async def apply_all(batch: list[Committed]) -> bool:
        nonlocal last_seq, state
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
                changed = True
                if committed.seq <= last_seq:
                    continue
            for before, after in committed.changes:
                changed |= state.apply_change(before, after)
            for decision in committed.decisions:
                state.apply_decision(decision)
                changed = True
            last_seq = committed.seq
        return changed

    last_publish = trio.current_time()
    gap = config.publish_interval
    while True:
        if not await apply_all(await inbox.take_all()):
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
