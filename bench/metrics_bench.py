"""Measure the metrics with a million stored trades: rebuild, live snapshot, memory.

Run from the repository root:

    python bench/metrics_bench.py [--trades 1000000] [--keep DIR]

It writes a synthetic history into a fresh SQLite database and archive (60 %
of the trades archived, as after months of running), then measures

1. the full recomputation from the database (``load_state_sync``), then the
   first snapshot, which scans the whole series once;
2. the cost of one new trade: a committed opening and resolution applied to
   the rebuilt state, then a snapshot, over 2,000 trades (median and 99th
   percentile);
3. the resident memory of the service: ``tradepulse run`` on the same data,
   started beside the in-process measurements and read from /proc once its
   metrics actor has published its first snapshot (current and peak).

The history has 2,000 markets, 5 strategies, 3 venues, 10 tags and 5 signal
types over three years. Three trades in four are binary shares with a
probability, the others longs and shorts. Results go to standard output, and
docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from actors.analytics.settings import MetricsSettings
from actors.analytics.state import MetricsState
from actors.metrics import load_state_sync
from actors.store import open_sync, prepare_archive_sync
from actors.trades import TradeRecord
from supervisor.config import MetricsConfig

START = datetime(2023, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 3 * 365 * 86_400
ARCHIVED_SHARE = 0.6
NEW_TRADES = 2_000


# One synthetic trade per row number ``i``, computed by SQLite so that a
# million rows take seconds. random() is SQLite's; the history differs from
# run to run but has the same shape. Every fourth trade is a long or short
# on a linear market, the others binary shares with a probability.
_HISTORY = """
WITH RECURSIVE numbers(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM numbers WHERE i < :count - 1),
trades_raw AS (
    SELECT
        i,
        abs(random()) % 100 AS roll,
        abs(random()) % 41000 - 20000 AS pnl_milli,
        i % 4 = 0 AS linear,
        :start + CAST(i * :step AS INTEGER) AS opened_s,
        60 + abs(random()) % 21600 AS held_s
    FROM numbers
)
INSERT INTO {table} (trade_id, status, venue, market, side, size, entry_price, fees, strategy,
    opened_at, market_kind, probability, signal_type, tags, exit_price, pnl, outcome, exit_fees,
    resolved_at, cancelled_at, cancel_reason)
SELECT
    'bench-' || i,
    CASE WHEN roll < 97 THEN 'resolved' WHEN roll < 99 THEN 'cancelled' ELSE 'open' END,
    CASE i % 3 WHEN 0 THEN 'kalshi' WHEN 1 THEN 'polymarket' ELSE 'binance' END,
    printf('market-%04d', abs(random()) % 2000),
    CASE WHEN linear THEN (CASE i % 2 WHEN 0 THEN 'long' ELSE 'short' END)
         ELSE (CASE i % 2 WHEN 0 THEN 'yes' ELSE 'no' END) END,
    CAST(1 + abs(random()) % 50 AS TEXT),
    CASE WHEN linear THEN printf('%d.%02d', 10 + abs(random()) % 900, abs(random()) % 100)
         ELSE printf('0.%02d', 5 + abs(random()) % 91) END,
    printf('0.%03d', abs(random()) % 300),
    'strategy-' || (abs(random()) % 5),
    strftime('%Y-%m-%dT%H:%M:%S.000000Z', opened_s, 'unixepoch'),
    CASE WHEN linear THEN 'linear' ELSE 'binary' END,
    CASE WHEN linear THEN NULL ELSE printf('0.%02d', 1 + abs(random()) % 99) END,
    'signal-' || (abs(random()) % 5),
    '["tag-' || (abs(random()) % 10) || '"]',
    CASE WHEN linear OR roll >= 97 THEN NULL WHEN pnl_milli > 0 THEN '1' ELSE '0' END,
    CASE WHEN roll < 97 THEN printf('%s%d.%03d', CASE WHEN pnl_milli < 0 THEN '-' ELSE '' END,
         abs(pnl_milli) / 1000, abs(pnl_milli) % 1000) END,
    CASE WHEN roll >= 97 THEN NULL WHEN pnl_milli > 0 THEN 'win' WHEN pnl_milli < 0 THEN 'loss' ELSE 'draw' END,
    NULL,
    CASE WHEN roll < 97 THEN strftime('%Y-%m-%dT%H:%M:%S.000000Z', opened_s + held_s, 'unixepoch') END,
    CASE WHEN roll >= 97 AND roll < 99
         THEN strftime('%Y-%m-%dT%H:%M:%S.000000Z', opened_s + held_s, 'unixepoch') END,
    NULL
FROM trades_raw
"""


def write_history(folder: Path, count: int) -> tuple[Path, Path]:
    """Write ``count`` trades, the older ``ARCHIVED_SHARE`` of them into the archive file."""
    database, archive = folder / "tradepulse.sqlite", folder / "archive.sqlite"
    prepare_archive_sync(archive)
    open_sync(database).close()
    archived = int(count * ARCHIVED_SHARE)
    start = int(START.timestamp())
    step = SPAN_SECONDS / count
    for path, first, part in ((archive, 0, archived), (database, archived, count - archived)):
        connection = sqlite3.connect(path)
        with connection:
            connection.execute(
                _HISTORY.format(table="trades"),
                {"count": part, "start": start + int(first * step), "step": step},
            )
        connection.close()
    # Trade ids restart at 0 in each file. The main file's ids get a prefix,
    # so that no id is in both files, as after a completed archive run.
    connection = sqlite3.connect(database)
    with connection:
        connection.execute("UPDATE trades SET trade_id = 'recent-' || trade_id")
    connection.close()
    return database, archive


def measure_rebuild(database: Path, archive: Path, settings: MetricsSettings) -> tuple[float, float, MetricsState]:
    """Rebuild the state and build its first snapshot; return both times in seconds and the state."""
    started = time.perf_counter()
    _, state = load_state_sync(database, archive, settings)
    loaded = time.perf_counter()
    # The first snapshot scans the whole series once; the service pays it too.
    state.snapshot()
    return loaded - started, time.perf_counter() - loaded, state


def measure_new_trades(state: MetricsState) -> list[float]:
    """Apply an opening and a resolution per new trade, then snapshot; return seconds per trade."""
    generator = random.Random(2)
    last = START + timedelta(seconds=SPAN_SECONDS + 86_400)
    costs = []
    state.snapshot()
    for index in range(NEW_TRADES):
        opened_at = last + timedelta(seconds=index * 30)
        opened = TradeRecord(
            trade_id=f"new-{index}", status="open", venue="kalshi", market="market-0001", side="yes",
            size=Decimal(10), entry_price=Decimal("0.55"), fees=Decimal("0.02"), strategy="strategy-1",
            opened_at=opened_at, market_kind="binary", probability=Decimal("0.6"), tags=("tag-1",),
        )
        pnl = Decimal(generator.randrange(-5_500, 4_500)) / 1000
        resolved = _resolve(opened, pnl, opened_at + timedelta(seconds=20))
        started = time.perf_counter()
        state.apply_change(None, opened)
        state.apply_change(opened, resolved)
        state.snapshot()
        costs.append(time.perf_counter() - started)
    return costs


def _resolve(record: TradeRecord, pnl: Decimal, at: datetime) -> TradeRecord:
    won = pnl > 0
    return dataclasses.replace(
        record, status="resolved", pnl=pnl, outcome=None, resolved_at=at,
        exit_price=Decimal(1) if won else Decimal(0),
    )


def _rss(pid: int) -> tuple[int, int]:
    """Return the current and the peak resident memory of ``pid`` in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


class ServiceProbe:
    """``tradepulse run`` on the benchmark data, watched until its metrics actor has started.

    It runs beside the in-process measurements, one core each, so that the
    benchmark stays under two minutes on a 2-core machine.
    """

    def __init__(self, folder: Path) -> None:
        environment = {
            **os.environ,
            "TRADEPULSE_DATA_DIR": str(folder),
            # Any free port, unless the caller confines the benchmark to one.
            "TRADEPULSE_FEED_PORT": os.environ.get("TRADEPULSE_FEED_PORT", "0"),
            "TRADEPULSE_INGEST_TOKEN": "bench-token",
        }
        config = folder / "bench.toml"
        config.write_text(
            "[metrics]\nstarting_balance = 100000.0\n"
            "[notifier]\nenabled = false\n[reflection]\nenabled = false\n[archiver]\nenabled = false\n"
        )
        self.started = time.perf_counter()
        self.ready: float | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "--config", str(config), "run"],
            cwd=REPOSITORY, env=environment, stderr=subprocess.PIPE, text=True,
        )
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if self.ready is None and "metrics: started with" in line:
                self.ready = time.perf_counter() - self.started

    def memory(self, timeout: float) -> tuple[int, int, float]:
        """Wait for the metrics actor, then return the current and peak RSS in kB and the start time."""
        deadline = time.perf_counter() + timeout
        while self.ready is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode} before its metrics started")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the service's metrics did not start within {timeout:.0f} s")
            time.sleep(0.2)
        # Let the first snapshot go out and the rebuild's garbage be freed.
        time.sleep(2)
        current, peak = _rss(self.process.pid)
        return current, peak, self.ready

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=1_000_000, help="trades in the history")
    parser.add_argument("--keep", type=Path, help="write the databases here and keep them")
    args = parser.parse_args()
    settings = MetricsSettings.from_config(MetricsConfig(starting_balance=100_000.0))

    with tempfile.TemporaryDirectory(prefix="tradepulse-bench-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        database, archive = write_history(folder, args.trades)
        print(f"history: {args.trades:,} trades written in {time.perf_counter() - started:.1f} s")

        service = ServiceProbe(folder)
        try:
            loading, first_snapshot, state = measure_rebuild(database, archive, settings)
            print(f"rebuild from the database: {loading:.1f} s, then the first snapshot {first_snapshot:.1f} s")

            costs = measure_new_trades(state)
            costs.sort()
            median = statistics.median(costs) * 1000
            p99 = costs[int(len(costs) * 0.99)] * 1000
            print(f"new trade (open + resolve + snapshot): median {median:.3f} ms, 99th percentile {p99:.3f} ms")
            del state

            current, peak, ready = service.memory(timeout=600)
        finally:
            service.stop()
        print(
            f"service: metrics started {ready:.1f} s after launch; "
            f"resident memory {current / 1024:.0f} MB, peak {peak / 1024:.0f} MB"
        )


if __name__ == "__main__":
    main()
