"""Measure how fast tradepulse accepts trades, against raw SQLite on the same machine.

Run from the repository root::

    python bench/ingest_bench.py             # every measurement, under two minutes on 2 cores
    python bench/ingest_bench.py --profile   # also cProfile one 5-producer run

One run measures:

1. the baseline: stdlib ``sqlite3`` ``executemany`` of pre-built ``trades`` rows
   (the schema and upsert statement of ``actors.store``, WAL, synchronous=NORMAL),
   one transaction per batch of ``logger.batch_max`` rows;
2. trades acknowledged per second through ``Service.intake`` with 1 and with 5
   producers, with the metrics actor on and off, best of ``THROUGHPUT_ROUNDS``
   runs interleaved with the baseline's. A trade counts once its
   envelope's ``committed`` event is set. Each producer keeps up to
   ``PRODUCER_WINDOW`` trades in flight, so the rate is not bound by one round
   trip per trade;
3. submit-to-acknowledgement latency at a fixed offered load, from an
   open-loop generator: each trade's latency runs from its scheduled submit
   time, so a stall of the service also delays the trades queued behind it;
4. trades per second through the real ``/ingest`` websocket, arrays of
   ``WEBSOCKET_ARRAY`` trades from one client in the same process;
5. the cost of each step of the hot path per trade, each step timed alone.

Messages are validated before the clock starts, except on the websocket,
where the service parses and validates the JSON itself. The notifier,
reflection and archiver actors are off, so only intake, logger and metrics
run. Every service run starts on an empty database in a temporary folder.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import itertools
import json
import logging
import os
import platform
import pstats
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import trio
from trio_websocket import open_websocket

from actors.logger import Committed, Envelope, write_batch
from actors.messages import Message, message_to_dict, parse_message
from actors.metrics import MetricsState
from actors.store import TRADE_SELECT, TRADE_UPSERT, open_database, open_sync, prepare_archive_sync
from actors.trades import apply_trade_message, record_to_row
from supervisor.config import Config, LoggerConfig, build_config
from supervisor.intake import decode_json
from supervisor.mailbox import Mailbox
from supervisor.service import Service

# Trades per throughput run, split evenly between the producers.
THROUGHPUT_TRADES = 40_000
# Each throughput figure is the best of this many runs, interleaved.
THROUGHPUT_ROUNDS = 2
# Trades one producer may have submitted but not yet seen acknowledged.
PRODUCER_WINDOW = 4_000
LATENCY_RATE = 5_000  # offered load, trades per second
LATENCY_SECONDS = 4.0
# Trades submitted in the first part of the latency run are left out of the
# percentiles, so that start-up effects such as cold caches stay out.
LATENCY_WARMUP_SECONDS = 0.5
WEBSOCKET_TRADES = 20_000
WEBSOCKET_ARRAY = 500

# Targets stated by the product; printed beside the figures, not asserted.
TARGET_RATE_5_PRODUCERS = 80_000  # trades per second
TARGET_BASELINE_RATIO = 0.2
TARGET_P99_MS = 5.0

TEMPLATE: dict[str, Any] = {
    "type": "trade_opened",
    "trade_id": "template",
    "venue": "kalshi",
    "market": "KXBTC15M-26JUL271245-45",
    "side": "yes",
    "size": "10",
    "entry_price": "0.96",
    "fees": "0.03",
    "strategy": "btc15m",
    "market_kind": "binary",
    "probability": "0.96",
    "opened_at": "2026-07-27T16:36:56Z",
}


def build_trades(prefix: str, count: int) -> list[Message]:
    """Return ``count`` validated trade_opened messages with unique trade ids."""
    template = parse_message(TEMPLATE)
    return [
        dataclasses.replace(template, trade_id=f"{prefix}-{index:07d}") for index in range(count)
    ]


# ---------------------------------------------------------------------------
# Baseline: stdlib sqlite3 alone.


def open_baseline_database(folder: Path) -> sqlite3.Connection:
    """Open an empty database with the service's schema and PRAGMAs, in autocommit mode."""
    connection = open_sync(folder / "baseline.sqlite")
    # Autocommit mode, so that BEGIN and COMMIT below are the only transaction bounds.
    connection.isolation_level = None
    return connection


def measure_baseline(rows: Sequence[tuple[Any, ...]], batch: int) -> float:
    """Return rows per second for executemany of ``rows`` in transactions of ``batch`` rows."""
    statement = TRADE_UPSERT.format(table="trades")
    with tempfile.TemporaryDirectory() as folder:
        connection = open_baseline_database(Path(folder))
        try:
            started = time.perf_counter()
            for start in range(0, len(rows), batch):
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(statement, rows[start : start + batch])
                connection.execute("COMMIT")
            elapsed = time.perf_counter() - started
        finally:
            connection.close()
    return len(rows) / elapsed


# ---------------------------------------------------------------------------
# The service, driven through Service.intake.


def make_config(data_dir: Path, *, metrics: bool) -> Config:
    return build_config(
        {
            "service": {"data_dir": str(data_dir)},
            "feed": {"port": 0},
            "metrics": {"enabled": metrics},
            "notifier": {"enabled": False},
            "reflection": {"enabled": False},
            "archiver": {"enabled": False},
        },
        environ={},
    )


@asynccontextmanager
async def running_service(config: Config) -> AsyncIterator[Service]:
    service = Service(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        try:
            yield service
        finally:
            service.stop()


def commit_count(config: Config) -> int:
    """Return the number of transactions the logger committed, from the database."""
    connection = sqlite3.connect(config.service.database_path)
    try:
        return int(connection.execute("SELECT seq FROM commit_sequence").fetchone()[0])
    finally:
        connection.close()


def check_stored(config: Config, expected: int) -> None:
    """Raise ``RuntimeError`` unless the database contains ``expected`` trades."""
    connection = sqlite3.connect(config.service.database_path)
    try:
        stored = int(connection.execute("SELECT COUNT(*) FROM trades").fetchone()[0])
    finally:
        connection.close()
    if stored != expected:
        raise RuntimeError(f"the service acknowledged {expected} trades but stored {stored}")


async def produce(service: Service, trades: Sequence[Message], window: int) -> None:
    """Submit ``trades``, at most ``window`` unacknowledged, and return once all are acknowledged."""
    in_flight: deque[Envelope] = deque()
    for trade in trades:
        in_flight.append(await service.intake.submit(trade))
        # Drop acknowledged envelopes without awaiting them, because Event.wait
        # on a set event still costs a pass through the scheduler.
        while in_flight and in_flight[0].committed.is_set():
            in_flight.popleft()
        if len(in_flight) >= window:
            await in_flight[0].committed.wait()
    while in_flight:
        await in_flight.popleft().committed.wait()


@dataclass
class ThroughputResult:
    producers: int
    metrics: bool
    trades: int
    seconds: float
    commits: int

    @property
    def rate(self) -> float:
        return self.trades / self.seconds

    @property
    def mean_batch(self) -> float:
        return self.trades / self.commits if self.commits else 0.0


def measure_throughput(
    producers: int, *, metrics: bool, profiler: cProfile.Profile | None = None
) -> ThroughputResult:
    per_producer = THROUGHPUT_TRADES // producers
    batches = [build_trades(f"p{index}", per_producer) for index in range(producers)]
    with tempfile.TemporaryDirectory() as folder:
        config = make_config(Path(folder), metrics=metrics)
        seconds = 0.0

        async def main() -> None:
            nonlocal seconds
            async with running_service(config) as service:
                gc.collect()
                if profiler is not None:
                    profiler.enable()
                started = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for trades in batches:
                        nursery.start_soon(produce, service, trades, PRODUCER_WINDOW)
                seconds = time.perf_counter() - started
                if profiler is not None:
                    profiler.disable()

        trio.run(main)
        commits = commit_count(config)
        check_stored(config, per_producer * producers)
    return ThroughputResult(producers, metrics, per_producer * producers, seconds, commits)


@dataclass
class LatencyResult:
    metrics: bool
    latencies_ms: list[float]
    # Largest delay between a trade's scheduled submit time and its actual one.
    max_submit_lag_ms: float
    commits: int
    # Maximum time by which a 1 ms sleep on the event loop overslept.
    max_loop_stall_ms: float
    max_gc_pause_ms: float

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class OpenLoopLoad:
    """Submits trades on a fixed schedule and records each one's latency from its slot."""

    def __init__(self, service: Service, trades: Sequence[Message], rate: float) -> None:
        self.service = service
        self.trades = trades
        self.interval = 1.0 / rate
        self.latencies_ms: list[float] = []
        self.max_submit_lag = 0.0
        self._send, self._receive = trio.open_memory_channel[tuple[float, Envelope]](float("inf"))

    async def generate(self, start: float) -> None:
        async with self._send:
            index = 0
            while index < len(self.trades):
                # Submit every trade whose time has come. epoll_wait takes its
                # timeout in milliseconds, so trades leave in small bursts,
                # each timed from its own slot.
                now = trio.current_time()
                while index < len(self.trades) and start + index * self.interval <= now:
                    scheduled = start + index * self.interval
                    envelope = await self.service.intake.submit(self.trades[index])
                    self.max_submit_lag = max(self.max_submit_lag, trio.current_time() - scheduled)
                    self._send.send_nowait((scheduled, envelope))
                    index += 1
                if index < len(self.trades):
                    await trio.sleep_until(start + index * self.interval)

    async def observe(self, start: float, warmup: float) -> None:
        async with self._receive:
            async for scheduled, envelope in self._receive:
                if not envelope.committed.is_set():
                    await envelope.committed.wait()
                if scheduled >= start + warmup:
                    self.latencies_ms.append((trio.current_time() - scheduled) * 1000)


class GcPauses:
    """Records the duration of every garbage collection while entered."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> Self:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


async def watch_loop_stalls(stalls_ms: list[float]) -> None:
    """Record by how much each 1 ms sleep oversleeps, until cancelled."""
    while True:
        before = trio.current_time()
        await trio.sleep(0.001)
        stalls_ms.append((trio.current_time() - before - 0.001) * 1000)


def measure_latency(*, metrics: bool) -> LatencyResult:
    trades = build_trades("lat", int(LATENCY_RATE * LATENCY_SECONDS))
    stalls_ms: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        config = make_config(Path(folder), metrics=metrics)

        async def main() -> OpenLoopLoad:
            async with running_service(config) as service, trio.open_nursery() as watchers:
                watchers.start_soon(watch_loop_stalls, stalls_ms)
                load = OpenLoopLoad(service, trades, LATENCY_RATE)
                start = trio.current_time() + 0.05
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load.generate, start)
                    nursery.start_soon(load.observe, start, LATENCY_WARMUP_SECONDS)
                watchers.cancel_scope.cancel()
            return load

        with GcPauses() as gc_pauses:
            load = trio.run(main)
        commits = commit_count(config)
    return LatencyResult(
        metrics,
        load.latencies_ms,
        load.max_submit_lag * 1000,
        commits,
        max(stalls_ms),
        max(gc_pauses.pauses_ms, default=0.0),
    )


# ---------------------------------------------------------------------------
# The /ingest websocket.


def measure_websocket() -> float:
    """Return trades per second acknowledged through /ingest, arrays from one client."""
    trades = build_trades("ws", WEBSOCKET_TRADES)
    requests = [
        json.dumps([message_to_dict(trade) for trade in trades[start : start + WEBSOCKET_ARRAY]])
        for start in range(0, len(trades), WEBSOCKET_ARRAY)
    ]
    seconds = 0.0

    async def main() -> None:
        nonlocal seconds
        with tempfile.TemporaryDirectory() as folder:
            async with running_service(make_config(Path(folder), metrics=True)) as service:
                assert service.port is not None
                headers = [(b"Authorization", f"Bearer {service.ingest_token}".encode())]
                async with open_websocket(
                    "127.0.0.1", service.port, "/ingest", use_ssl=False, extra_headers=headers
                ) as connection:
                    accepted = 0

                    async def send_all() -> None:
                        for text in requests:
                            await connection.send_message(text)

                    async def receive_all() -> None:
                        nonlocal accepted
                        for _ in requests:
                            reply = json.loads(await connection.get_message())
                            if reply["status"] != "accepted":
                                raise RuntimeError(f"ingest rejected a benchmark request: {reply}")
                            accepted += reply["accepted"]

                    started = time.perf_counter()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(send_all)
                        nursery.start_soon(receive_all)
                    seconds = time.perf_counter() - started
                    if accepted != len(trades):
                        raise RuntimeError(
                            f"ingest acknowledged {accepted} of {len(trades)} trades"
                        )

    trio.run(main)
    return len(trades) / seconds


# ---------------------------------------------------------------------------
# The cost of each step of the hot path, per trade.
#
# Other processes can change the machine's speed by a factor of two within a
# minute, so every step is timed in several rounds and the best round is kept.
# The write_batch steps are timed batch by batch next to write_batch itself,
# so that the part left over is not an artefact of that drift.

# The queries of write_batch, run here on a stdlib connection to get their
# SQLite cost without the thread hops of sqlite_anyio.
SELECT_TRADES = TRADE_SELECT.format(table="trades") + " WHERE trade_id IN ({placeholders})"
SELECT_ARCHIVED = "SELECT trade_id FROM archive.trades WHERE trade_id IN ({placeholders})"
IN_CHUNK = 500
STEP_ROUNDS = 5

WRITE_BATCH_STEPS = (
    "apply_trade_message (new trade)",
    "record_to_row",
    "BEGIN IMMEDIATE",
    "SELECT existing trades",
    "SELECT archived trades",
    "executemany upsert",
    "UPDATE commit_sequence + COMMIT",
)


def time_per_item(action: Callable[[], object], items: int, repeats: int = STEP_ROUNDS) -> float:
    """Return the best time of ``action`` over ``repeats`` runs, in microseconds per item."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best / items * 1e6


def measure_python_steps(batch: int) -> dict[str, float]:
    """Time the per-trade work outside write_batch: envelopes, events, metrics."""
    trades = build_trades("step", batch)
    records = [apply_trade_message(None, trade) for trade in trades]  # type: ignore[arg-type]
    changes = [(None, record) for record in records]
    steps: dict[str, float] = {}
    # Only the /ingest path pays these two; the other runs submit pre-built messages.
    request = json.dumps([message_to_dict(trade) for trade in trades])
    steps["JSON decode of an array request (decode_json)"] = time_per_item(
        lambda: decode_json(request), batch
    )
    documents = decode_json(request)
    steps["validation (parse_message)"] = time_per_item(
        lambda: [parse_message(d) for d in documents], batch
    )
    steps["Envelope() with its trio.Event"] = time_per_item(
        lambda: [Envelope(t) for t in trades], batch
    )

    def set_events() -> None:
        for envelope in [Envelope(t) for t in trades]:
            envelope.committed.set()

    steps["Envelope() + Event.set()"] = time_per_item(set_events, batch)

    def apply_metrics() -> None:
        state = MetricsState()
        for before, after in changes:
            state.apply_change(before, after)

    steps["MetricsState.apply_change (new trade)"] = time_per_item(apply_metrics, batch)
    committed = Committed(1, changes, [])  # type: ignore[arg-type]
    steps["Committed.newly_resolved (service._on_commit)"] = time_per_item(
        lambda: committed.newly_resolved, batch
    )
    return steps


def time_sql_steps(connection: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> list[float]:
    """Run the statements of one write_batch of new trades and return the seconds each took."""
    ids = [row[0] for row in rows]
    marks = [time.perf_counter()]
    connection.execute("BEGIN IMMEDIATE")
    marks.append(time.perf_counter())
    for query in (SELECT_TRADES, SELECT_ARCHIVED):
        for offset in range(0, len(ids), IN_CHUNK):
            part = ids[offset : offset + IN_CHUNK]
            connection.execute(
                query.format(placeholders=", ".join("?" for _ in part)), part
            ).fetchall()
        marks.append(time.perf_counter())
    connection.executemany(TRADE_UPSERT.format(table="trades"), rows)
    marks.append(time.perf_counter())
    connection.execute("UPDATE commit_sequence SET seq = seq + 1 RETURNING seq").fetchone()
    connection.execute("COMMIT")
    marks.append(time.perf_counter())
    return [end - begin for begin, end in itertools.pairwise(marks)]


async def _measure_async_steps(batch: int, folder: Path) -> dict[str, float]:
    steps: dict[str, float] = {}
    calls = 1_000

    def best_per_call(samples: list[float]) -> float:
        return min(samples) / calls * 1e6

    checkpoint, hop, dispatch = [], [], []
    stdlib_folder = folder / "stdlib"
    stdlib_folder.mkdir()
    prepare_archive_sync(stdlib_folder / "archive.sqlite")
    stdlib = open_baseline_database(stdlib_folder)
    stdlib.execute("ATTACH DATABASE ? AS archive", (str(stdlib_folder / "archive.sqlite"),))
    connection = await open_database(folder / "anyio.sqlite", folder / "archive.sqlite")
    try:
        for _ in range(STEP_ROUNDS):
            started = time.perf_counter()
            for _ in range(calls):
                await trio.lowlevel.checkpoint()
            checkpoint.append(time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(calls):
                await trio.to_thread.run_sync(int)
            hop.append(time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(calls):
                await connection.execute("SELECT 1")
            dispatch.append(time.perf_counter() - started)
        steps[
            "scheduler pass (a checkpoint; Mailbox.put and Event.wait on a set event cost one)"
        ] = best_per_call(checkpoint)
        steps["trio.to_thread.run_sync round trip, per call"] = best_per_call(hop)
        steps["sqlite_anyio execute('SELECT 1'), per call"] = best_per_call(dispatch)

        mailbox: Mailbox[Envelope] = Mailbox("bench", batch)
        envelopes = [Envelope(t) for t in build_trades("mail", batch)]
        mailbox_seconds = []
        for _ in range(STEP_ROUNDS):
            started = time.perf_counter()
            for envelope in envelopes:
                await mailbox.put(envelope)
            await mailbox.take_batch(batch)
            mailbox.ack()
            mailbox_seconds.append(time.perf_counter() - started)
        steps["Mailbox.put + take_batch, per trade"] = min(mailbox_seconds) / batch * 1e6

        # One round more than counted: the first batch of each database warms its caches.
        trades = build_trades("write", batch * (STEP_ROUNDS + 1))
        timings: dict[str, list[float]] = {name: [] for name in (*WRITE_BATCH_STEPS, "write_batch")}
        for round_number in range(STEP_ROUNDS + 1):
            chunk = trades[round_number * batch : (round_number + 1) * batch]
            started = time.perf_counter()
            await write_batch(connection, chunk)
            write_seconds = time.perf_counter() - started

            started = time.perf_counter()
            records = [apply_trade_message(None, t) for t in chunk]  # type: ignore[arg-type]
            apply_seconds = time.perf_counter() - started
            started = time.perf_counter()
            rows = [record_to_row(record) for record in records]
            row_seconds = time.perf_counter() - started
            sql_seconds = time_sql_steps(stdlib, rows)
            if round_number == 0:
                continue
            timings["write_batch"].append(write_seconds)
            for name, seconds in zip(WRITE_BATCH_STEPS, [apply_seconds, row_seconds, *sql_seconds]):
                timings[name].append(seconds)
        for name in WRITE_BATCH_STEPS:
            steps[name] = min(timings[name]) / batch * 1e6
        steps["write_batch total, per trade"] = min(timings["write_batch"]) / batch * 1e6
        # What write_batch costs beyond its own Python work and statements:
        # the thread hops of sqlite_anyio and the scheduling around them.
        steps["write_batch beyond the steps above (thread hops, scheduling)"] = steps[
            "write_batch total, per trade"
        ] - sum(steps[name] for name in WRITE_BATCH_STEPS)
    finally:
        stdlib.close()
        await connection.close()
    return steps


def measure_async_steps(batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        return trio.run(_measure_async_steps, batch, Path(folder))


def measure_null_binding(batch: int) -> dict[str, float]:
    """Time executemany of new trade rows without and with an identity adapter for None.

    CPython 3.11's sqlite3 binds int, float and str directly but passes any
    other parameter, None included, through its adapter lookup first. A row
    of a new trade has 8 NULL columns of 21.
    """
    rows = [
        record_to_row(apply_trade_message(None, trade))  # type: ignore[arg-type]
        for trade in build_trades("null", batch * 5)
    ]
    key = (type(None), sqlite3.PrepareProtocol)
    registered = sqlite3.adapters.get(key)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    try:
        for _ in range(STEP_ROUNDS):
            for with_adapter in (False, True):
                if with_adapter:
                    sqlite3.register_adapter(type(None), lambda value: value)
                else:
                    sqlite3.adapters.pop(key, None)
                seconds[with_adapter].append(1 / measure_baseline(rows, batch))
    finally:
        # Leave the process-wide adapter table as it was found.
        sqlite3.adapters.pop(key, None)
        if registered is not None:
            sqlite3.adapters[key] = registered
    return {
        "raw executemany + commit, None parameters adapted (as now)": min(seconds[False]) * 1e6,
        "raw executemany + commit, identity adapter registered for None": min(seconds[True]) * 1e6,
    }


# ---------------------------------------------------------------------------
# Output.


def machine_facts() -> list[str]:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"date: {datetime.now(UTC).date().isoformat()}",
        f"CPU count: {os.cpu_count()} ({platform.machine()})",
        f"Python: {platform.python_version()} ({platform.python_implementation()})",
        f"SQLite: {sqlite3.sqlite_version} (stdlib sqlite3 module)",
        f"trio: {trio.__version__}",
        f"platform: {platform.platform()}",
        # Other processes on the machine change every figure below.
        f"load average (1, 5, 15 min) at start: {load}",
    ]


def verdict(passed: bool) -> str:
    return "pass" if passed else "miss"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a Markdown table, so that the output can go into docs/benchmarks.md as is."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def rate_range(rates: Sequence[float]) -> str:
    return f"{min(rates):,.0f} to {max(rates):,.0f}"


def report_throughput(batch: int) -> None:
    baseline_rows = [
        record_to_row(apply_trade_message(None, trade))  # type: ignore[arg-type]
        for trade in build_trades("base", THROUGHPUT_TRADES)
    ]
    configurations = [(producers, metrics) for metrics in (True, False) for producers in (1, 5)]
    baselines: list[float] = []
    results: dict[tuple[int, bool], list[ThroughputResult]] = {key: [] for key in configurations}
    # Rounds interleave the baseline and the service runs, so that a slow
    # spell of the machine hits both alike.
    for _ in range(THROUGHPUT_ROUNDS):
        baselines.append(measure_baseline(baseline_rows, batch))
        for producers, metrics in configurations:
            results[producers, metrics].append(measure_throughput(producers, metrics=metrics))
    websocket = [measure_websocket() for _ in range(THROUGHPUT_ROUNDS)]
    baseline = max(baselines)

    print(
        f"Throughput: {THROUGHPUT_TRADES:,} new trades per run, "
        f"best of {THROUGHPUT_ROUNDS} rounds; "
        f"x baseline divides best by best"
    )
    rows = [
        [
            f"raw sqlite3 executemany, {batch:,} rows per transaction",
            f"{baseline:,.0f}",
            rate_range(baselines),
            "1.00",
            f"{batch:,}",
            "",
        ]
    ]
    for producers, metrics in configurations:
        runs = results[producers, metrics]
        best = max(runs, key=lambda result: result.rate)
        target = ""
        if producers == 5 and metrics:
            target = (
                f">= {TARGET_RATE_5_PRODUCERS:,}/s: "
                f"{verdict(best.rate >= TARGET_RATE_5_PRODUCERS)}; "
                f">= {TARGET_BASELINE_RATIO} x baseline: "
                f"{verdict(best.rate / baseline >= TARGET_BASELINE_RATIO)}"
            )
        plural = "s" if producers > 1 else ""
        rows.append(
            [
                f"service, {producers} producer{plural}, metrics {'on' if metrics else 'off'}",
                f"{best.rate:,.0f}",
                rate_range([result.rate for result in runs]),
                f"{best.rate / baseline:.3f}",
                f"{best.mean_batch:,.0f}",
                target,
            ]
        )
    websocket_path = (
        f"/ingest websocket, 1 client, arrays of {WEBSOCKET_ARRAY}, metrics on "
        f"({WEBSOCKET_TRADES:,} trades)"
    )
    rows.append(
        [
            websocket_path,
            f"{max(websocket):,.0f}",
            rate_range(websocket),
            f"{max(websocket) / baseline:.3f}",
            "",
            "",
        ]
    )
    print_table(
        ["path", "trades/s", "range over rounds", "x baseline", "rows per commit", "target"], rows
    )


def report_latency() -> None:
    print(
        f"Latency from scheduled submit to acknowledgement, {LATENCY_RATE:,} trades/s offered "
        f"for {LATENCY_SECONDS:g} s (first {LATENCY_WARMUP_SECONDS:g} s left out)"
    )
    rows = []
    for metrics in (True, False):
        result = measure_latency(metrics=metrics)
        p99 = result.percentile(0.99)
        target = f"p99 < {TARGET_P99_MS:g} ms: {verdict(p99 < TARGET_P99_MS)}" if metrics else ""
        rows.append(
            [
                f"metrics {'on' if metrics else 'off'}",
                f"{len(result.latencies_ms):,}",
                f"{result.percentile(0.50):.2f}",
                f"{p99:.2f}",
                f"{result.percentile(0.999):.2f}",
                f"{max(result.latencies_ms):.2f}",
                f"{result.commits:,}",
                f"{result.max_submit_lag_ms:.1f}",
                f"{result.max_loop_stall_ms:.1f}",
                f"{result.max_gc_pause_ms:.1f}",
                target,
            ]
        )
    header = [
        "run",
        "trades",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "commits",
        "max submit lag ms",
        "max loop stall ms",
        "max GC pause ms",
        "target",
    ]
    print_table(header, rows)


def report_steps(batch: int) -> None:
    print(
        f"Cost per trade of each step, timed alone, best of {STEP_ROUNDS} rounds "
        f"(microseconds; batches of {batch:,} new trades)"
    )
    steps = {
        **measure_python_steps(batch),
        **measure_async_steps(batch),
        **measure_null_binding(batch),
    }
    print_table(["step", "us"], [[name, f"{value:.2f}"] for name, value in steps.items()])


def report_profile() -> None:
    profiler = cProfile.Profile()
    result = measure_throughput(5, metrics=True, profiler=profiler)
    print(
        f"cProfile of the event-loop thread, 5 producers, metrics on: {result.rate:,.0f} trades/s "
        f"under the profiler, {result.commits} commits. Worker threads are not profiled: "
        "their SQLite time shows here as epoll waits."
    )
    output = io.StringIO()
    stats = pstats.Stats(profiler, stream=output)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(r"actors/|supervisor/|sqlite_anyio|to_thread", 30)
    print(output.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run one 5-producer throughput run under cProfile and print the top functions",
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    batch = LoggerConfig().batch_max
    for fact in machine_facts():
        print(fact)
    print()
    report_throughput(batch)
    report_latency()
    report_steps(batch)
    if arguments.profile:
        report_profile()


if __name__ == "__main__":
    main()
