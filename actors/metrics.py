"""The metrics actor: a live performance snapshot, published when it changes.

``MetricsState`` is incremental. It keeps the latest record of every trade and
aggregates that can be updated by taking a record's old contribution out and
its new one in, so that a trade costs O(1) however long the history. The max
drawdown follows the realized-PnL curve in resolution order; a resolution
that arrives out of time order marks it for one full recomputation.

No NaN or Infinity leaves this module: a ratio with a zero denominator is
``None`` (JSON null).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from actors.logger import Committed
from actors.messages import Decision, format_time
from actors.store import load_stored_state_sync
from actors.trades import TradeRecord
from supervisor.config import MetricsConfig
from supervisor.mailbox import Backlog

log = logging.getLogger(__name__)

ZERO = Decimal(0)
UNKNOWN_STRATEGY = "unknown"


@dataclass
class Aggregate:
    """Sums over a set of trades from which a snapshot is derived."""

    open: int = 0
    resolved: int = 0
    cancelled: int = 0
    wins: int = 0
    losses: int = 0
    draws: int = 0
    realized_pnl: Decimal = ZERO
    gross_profit: Decimal = ZERO
    gross_loss: Decimal = ZERO
    open_exposure: Decimal = ZERO

    def add(self, record: TradeRecord, sign: int) -> None:
        """Add a record's contribution (``sign`` 1) or take it out (-1)."""
        if record.status == "open":
            self.open += sign
            if record.cost is not None:
                self.open_exposure += sign * record.cost
        elif record.status == "cancelled":
            self.cancelled += sign
        else:
            self.resolved += sign
            pnl = record.pnl or ZERO
            self.realized_pnl += sign * pnl
            if pnl > 0:
                self.gross_profit += sign * pnl
            elif pnl < 0:
                self.gross_loss += sign * -pnl
            if record.outcome == "win":
                self.wins += sign
            elif record.outcome == "loss":
                self.losses += sign
            else:
                self.draws += sign

    def to_dict(self) -> dict[str, Any]:
        decided = self.wins + self.losses
        return {
            "open": self.open,
            "resolved": self.resolved,
            "cancelled": self.cancelled,
            "wins": self.wins,
            "losses": self.losses,
            "draws": self.draws,
            # Draws count neither way: the rate is over decided trades.
            "win_rate": round(self.wins / decided, 6) if decided else None,
            "realized_pnl": _money(self.realized_pnl),
            "gross_profit": _money(self.gross_profit),
            "gross_loss": _money(self.gross_loss),
            "profit_factor": (
                round(float(self.gross_profit / self.gross_loss), 6) if self.gross_loss else None
            ),
            "open_exposure": _money(self.open_exposure),
        }


def _money(value: Decimal) -> float:
    # Decimal is exact internally; JSON consumers get a plain number.
    return float(value)


class MetricsState:
    """Incremental metrics over every trade and decision seen."""

    def __init__(self) -> None:
        self.records: dict[str, TradeRecord] = {}
        self.total = Aggregate()
        self.by_strategy: dict[str, Aggregate] = {}
        self.decisions = {"trade": 0, "hold": 0}
        # Realized-PnL curve in resolution order, for the max drawdown.
        self._equity = ZERO
        self._peak = ZERO
        self._max_drawdown = ZERO
        self._last_resolution: tuple[datetime, str] | None = None
        self._curve_stale = False

    def _strategy(self, record: TradeRecord) -> Aggregate:
        name = record.strategy or UNKNOWN_STRATEGY
        aggregate = self.by_strategy.get(name)
        if aggregate is None:
            aggregate = self.by_strategy[name] = Aggregate()
        return aggregate

    def apply(self, record: TradeRecord) -> bool:
        """Replace the stored state of ``record.trade_id``; return True if it changed."""
        before = self.records.get(record.trade_id)
        if before == record:
            return False
        if before is not None:
            self.total.add(before, -1)
            self._strategy(before).add(before, -1)
        self.total.add(record, 1)
        self._strategy(record).add(record, 1)
        self.records[record.trade_id] = record
        self._track_curve(before, record)
        return True

    def apply_change(self, before: TradeRecord | None, after: TradeRecord) -> bool:
        """Apply one committed change; return True if the state changed."""
        del before  # the state keeps each trade's latest record itself
        return self.apply(after)

    def apply_decision(self, decision: Decision) -> None:
        self.decisions[decision.action] += 1

    def _track_curve(self, before: TradeRecord | None, after: TradeRecord) -> None:
        was_resolved = before is not None and before.status == "resolved"
        if was_resolved:
            # A corrected PnL changes a point in the middle of the curve.
            self._curve_stale = True
            return
        if after.status != "resolved" or after.resolved_at is None:
            return
        position = (after.resolved_at, after.trade_id)
        if self._last_resolution is not None and position < self._last_resolution:
            self._curve_stale = True
            return
        self._last_resolution = position
        self._extend_curve(after.pnl or ZERO)

    def _extend_curve(self, pnl: Decimal) -> None:
        self._equity += pnl
        self._peak = max(self._peak, self._equity)
        self._max_drawdown = max(self._max_drawdown, self._peak - self._equity)

    def _rebuild_curve(self) -> None:
        resolved = sorted(
            (r for r in self.records.values() if r.status == "resolved" and r.resolved_at),
            key=lambda r: (r.resolved_at, r.trade_id),
        )
        self._equity = self._peak = self._max_drawdown = ZERO
        for record in resolved:
            self._extend_curve(record.pnl or ZERO)
        last = resolved[-1] if resolved else None
        self._last_resolution = (last.resolved_at, last.trade_id) if last and last.resolved_at else None
        self._curve_stale = False

    @property
    def max_drawdown(self) -> Decimal:
        """Largest fall of cumulative realized PnL from its running peak (currency)."""
        if self._curve_stale:
            self._rebuild_curve()
        return self._max_drawdown

    def snapshot(self) -> dict[str, Any]:
        """The JSON document that the feed, ``report --json`` and tests share."""
        document = {
            "type": "metrics",
            "generated_at": format_time(datetime.now(UTC)),
            **self.total.to_dict(),
            "max_drawdown": _money(self.max_drawdown),
            "decisions": dict(self.decisions),
            "by_strategy": {
                name: aggregate.to_dict()
                for name, aggregate in sorted(self.by_strategy.items())
                if aggregate.open or aggregate.resolved or aggregate.cancelled
            },
        }
        return document


def compute_from_records(records: Iterable[TradeRecord]) -> MetricsState:
    """Build the state from stored trades, in resolution order."""
    state = MetricsState()
    ordered = sorted(
        records, key=lambda r: (r.resolved_at is None, r.resolved_at or _EPOCH, r.trade_id)
    )
    for record in ordered:
        state.apply(record)
    return state


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def load_state_sync(database: Path, archive: Path | None) -> tuple[int, MetricsState]:
    """Rebuild the state from the database and the archive, with its commit sequence."""
    stored = load_stored_state_sync(database, archive)
    state = compute_from_records(stored.trades)
    for action, count in stored.decision_counts.items():
        state.decisions[action] = count
    return stored.seq, state


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
    # Rebuilding from the database makes a restart exact: every transaction
    # this actor lost in a crash was committed before it was queued. The
    # transactions that the rebuild already saw are skipped by sequence number.
    loaded_seq, state = await trio.to_thread.run_sync(load_state_sync, database, archive)
    log.info("metrics: started with %d trades (commit %d)", len(state.records), loaded_seq)
    publish(state.snapshot())
    task_status.started()

    def apply_all(batch: list[Committed]) -> bool:
        changed = False
        for committed in batch:
            if committed.seq <= loaded_seq:
                continue
            for before, after in committed.changes:
                changed |= state.apply_change(before, after)
            for decision in committed.decisions:
                state.apply_decision(decision)
                changed = True
        return changed

    last_publish = trio.current_time()
    while True:
        if not apply_all(await inbox.take_all()):
            continue
        # Coalesce: transactions that commit while we wait go into the same snapshot.
        await trio.sleep_until(last_publish + config.publish_interval)
        apply_all(inbox.take_nowait())
        publish(state.snapshot())
        last_publish = trio.current_time()
