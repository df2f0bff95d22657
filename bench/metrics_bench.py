"""Measure the metrics with a million stored trades: rebuild, checkpoint, live snapshot, memory.

Run from the repository root:

    python bench/metrics_bench.py [--trades 1000000] [--keep DIR]

It writes a synthetic history into a fresh SQLite database and archive (60 %
of the trades archived, as after months of running), then measures

1. the baseline: reading every row with the rebuild's reader
   (``scan_stored_trades_sync``) and doing nothing with it;
2. the full recomputation from the database (``load_state_sync``), then the
   first snapshot, which scans the whole series once;
3. writing the checkpoint of the rebuilt state as the metrics actor does:
   pickling on a trio event loop, whose longest stall a ticker task
   records, then the write in a worker thread (fsync included);
4. a restart from that checkpoint (``restore_state_sync``), then the first
   snapshot, and a check that the restored document equals the rebuilt one;
5. the cost of one new trade: a committed opening and resolution applied to
   the rebuilt state, then a snapshot, over 2,000 trades (median and 99th
   percentile);
6. the resident memory of the service: ``tradepulse run`` on the same data,
   started beside the in-process measurements and read from /proc once its
   metrics actor has published its first snapshot (current and peak). The
   service writes its own checkpoint once its rebuild is done, or at its
   stop. A second run then starts from it, and its start time and memory
   are read the same way.

Times 2 to 4 are also given as a ratio to the baseline of the same run.

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

import trio

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from actors.analytics.checkpoint import (
    CheckpointKey,
    checkpoint_path,
    pickle_state,
    write_checkpoint_sync,
)
from actors.analytics.settings import MetricsSettings
from actors.analytics.state import MetricsState
from actors.metrics import load_state_sync, restore_state_sync
from actors.store import (
    open_sync,
    prepare_archive_sync,
    read_identity_sync,
    scan_stored_trades_sync,
)
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


def measure_row_read(database: Path, archive: Path) -> tuple[float, int]:
    """Read every trade and HOLD row with the rebuild's reader, doing nothing; return seconds and rows."""
    rows = 0

    def count(row: tuple[object, ...]) -> None:
        nonlocal rows
        rows += 1

    started = time.perf_counter()
    scan_stored_trades_sync(database, archive, count, count)
    return time.perf_counter() - started, rows


def measure_rebuild(database: Path, archive: Path, settings: MetricsSettings) -> tuple[float, float, MetricsState]:
    """Rebuild the state and build its first snapshot; return both times in seconds and the state."""
    started = time.perf_counter()
    _, state = load_state_sync(database, archive, settings)
    loaded = time.perf_counter()
    # The first snapshot scans the whole series once; the service pays it too.
    state.snapshot()
    return loaded - started, time.perf_counter() - loaded, state


@dataclasses.dataclass
class CheckpointWrite:
    """Times of one checkpoint write, in seconds, and its size in bytes."""

    # Pickling on the event loop, and the longest time the loop did not run.
    pause: float
    max_stall: float
    # Pickling plus the write in the worker thread, fsync included.
    total: float
    size: int


def measure_checkpoint_write(
    database: Path, archive: Path, state: MetricsState, settings: MetricsSettings
) -> CheckpointWrite:
    """Write the checkpoint of ``state`` as the metrics actor does, on a trio event loop."""
    identity = read_identity_sync(database, archive)
    key = CheckpointKey.current(identity, settings)
    assert key is not None, "the benchmark database has no id"
    result: list[CheckpointWrite] = []

    async def write() -> None:
        stalls = [0.0]
        done = trio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await trio.sleep(0.001)
                now = time.perf_counter()
                stalls.append(now - last)
                last = now

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.sleep(0.05)
            started = time.perf_counter()
            pickled = pickle_state(state)
            pause = time.perf_counter() - started
            path = checkpoint_path(database)
            written = await trio.to_thread.run_sync(write_checkpoint_sync, path, key, pickled)
            total = time.perf_counter() - started
            size = pickled.size
            pickled.release()
            assert written, "the checkpoint could not be written"
            await trio.sleep(0.05)
            done.set()
        result.append(CheckpointWrite(pause, max(stalls), total, size))

    trio.run(write)
    return result[0]


def measure_restore(
    database: Path, archive: Path, settings: MetricsSettings
) -> tuple[float, float, MetricsState]:
    """Restart from the checkpoint and build the first snapshot; return both times and the state."""
    started = time.perf_counter()
    restored = restore_state_sync(database, archive, settings)
    loaded = time.perf_counter()
    assert restored.from_checkpoint, "the checkpoint was not used"
    restored.state.snapshot()
    return loaded - started, time.perf_counter() - loaded, restored.state


def _document(state: MetricsState) -> dict[str, object]:
    document = state.snapshot()
    document.pop("generated_at")
    return document


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


# Log lines of the metrics actor once it has looked for a checkpoint.
_CHECKPOINT_LOOKED_UP = (
    "metrics: no checkpoint",
    "metrics: loaded checkpoint",
    "metrics: cannot read checkpoint",
    "not used because",
)


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
        # Set once the metrics actor has looked for a checkpoint.
        self.checked = threading.Event()
        # The log line of the metrics start, and of the service's latest checkpoint write.
        self.start_line = ""
        self.checkpoint_line = ""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "--config", str(config), "run"],
            cwd=REPOSITORY, env=environment, stderr=subprocess.PIPE, text=True,
        )
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if any(text in line for text in _CHECKPOINT_LOOKED_UP):
                self.checked.set()
            if self.ready is None and "metrics: started with" in line:
                self.ready = time.perf_counter() - self.started
                self.start_line = line.strip()
            if "metrics: wrote checkpoint" in line:
                self.checkpoint_line = line.strip()

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

    def wait_until_checked(self, timeout: float) -> None:
        """Wait until the metrics actor has looked for a checkpoint, so that one written now is not used."""
        if not self.checked.wait(timeout):
            raise RuntimeError(f"the service's metrics did not look for a checkpoint within {timeout:.0f} s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._watcher.join(timeout=5)


def _ratio(seconds: float, baseline: float) -> str:
    return f"{seconds / baseline:.2f} x the baseline"


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
            baseline, rows = measure_row_read(database, archive)
            per_row = baseline / rows * 1e6
            print(f"baseline, reading {rows:,} rows: {baseline:.1f} s ({per_row:.2f} us per row)")

            loading, first_snapshot, state = measure_rebuild(database, archive, settings)
            print(
                f"rebuild from the database: {loading:.1f} s ({_ratio(loading, baseline)}), "
                f"then the first snapshot {first_snapshot:.1f} s"
            )

            # The service must rebuild, so that its memory is that of a rebuild.
            service.wait_until_checked(timeout=60)
            write = measure_checkpoint_write(database, archive, state, settings)
            print(
                f"checkpoint write: {write.size / 1e6:.1f} MB; event loop paused {write.pause * 1000:.0f} ms "
                f"for pickling (longest stall {write.max_stall * 1000:.0f} ms); "
                f"total {write.total:.2f} s ({_ratio(write.total, baseline)})"
            )

            restoring, restored_snapshot, restored = measure_restore(database, archive, settings)
            same = _document(restored) == _document(state)
            print(
                f"restart from the checkpoint: {restoring:.2f} s ({_ratio(restoring, baseline)}), "
                f"then the first snapshot {restored_snapshot * 1000:.0f} ms; "
                f"document equal to the rebuilt one: {'yes' if same else 'NO'}"
            )
            del restored
            # The restart below must start from the service's own checkpoint, not this one.
            checkpoint_path(database).unlink()

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
        print(f"  {service.start_line}")
        print(f"  {service.checkpoint_line or 'no checkpoint written'}")

        # The service's own checkpoint, written after its rebuild or at its stop.
        restarted = ServiceProbe(folder)
        try:
            current, peak, ready = restarted.memory(timeout=600)
        finally:
            restarted.stop()
        print(
            f"service restart: metrics started {ready:.1f} s after launch; "
            f"resident memory {current / 1024:.0f} MB, peak {peak / 1024:.0f} MB"
        )
        print(f"  {restarted.start_line}")


if __name__ == "__main__":
    main()
