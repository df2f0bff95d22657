"""Chaos tests: kill actors and inject poison while trades stream in.

After the queues drain, the checks are those of a total-queue checker: every
acknowledged message is stored exactly once and as the model predicts, nothing
unexpected appears, the dead letters are exactly the poison messages, the
live metrics equal a recomputation from the database, and the restart counts
match the kills. Hypothesis prints a failing example together with a
``@reproduce_failure`` blob that replays it.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.messages import Message, TradeOpened
from actors.metrics import load_state_sync
from actors.store import TRADE_SELECT
from actors.trades import TradeRecord, apply_trade_message, row_to_record
from helpers import cancelled, decision, opened, resolved
from supervisor.admin import list_dead_letters
from supervisor.config import Config, build_config
from supervisor.faults import FaultPlan, active_plan
from supervisor.service import Service
from supervisor.supervisor import ActorState, RestartIntensityExceeded

# Examples per run: bounded in CI, raised locally with TRADEPULSE_CHAOS_EXAMPLES.
EXAMPLES = int(os.environ.get("TRADEPULSE_CHAOS_EXAMPLES", "25"))

KILLABLE = ("logger", "metrics", "notifier", "archiver")


@dataclass(frozen=True)
class Scenario:
    messages: list[Message]
    poison: frozenset[str]
    # (index of the message after which to kill, actor name)
    kills: list[tuple[int, str]]
    # Hits of the point between the logger's commit and its acknowledgement that fail.
    after_commit_failures: frozenset[int]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    trade_count = draw(st.integers(min_value=1, max_value=12))
    messages: list[Message] = []
    for index in range(trade_count):
        trade_id = f"t{index}"
        minute = draw(st.integers(min_value=0, max_value=500))
        messages.append(opened(trade_id, minute=minute, strategy=draw(st.sampled_from(["a", "b"]))))
        ending = draw(st.sampled_from(["open", "resolved", "cancelled", "corrected"]))
        if ending in ("resolved", "corrected"):
            pnl = draw(st.decimals(min_value=-50, max_value=50, places=2))
            messages.append(resolved(trade_id, str(pnl), minute=minute + 15))
        if ending == "corrected":
            messages.append(resolved(trade_id, "0.5", minute=minute + 16))
        if ending == "cancelled":
            messages.append(cancelled(trade_id, minute=minute + 5))
        if draw(st.booleans()):
            messages.append(decision("hold", minute=minute, market=f"m{index}"))

    # Shuffle (out of order), then repeat some messages (redelivery by the bot).
    messages = draw(st.permutations(messages))
    repeats = draw(st.lists(st.sampled_from(messages), max_size=5))
    messages = list(messages) + repeats

    poison_count = draw(st.integers(min_value=0, max_value=2))
    poison = frozenset(f"poison{index}" for index in range(poison_count))
    for key in sorted(poison):
        position = draw(st.integers(min_value=0, max_value=len(messages)))
        messages.insert(position, opened(key))

    kills = draw(
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=len(messages) - 1), st.sampled_from(KILLABLE)),
            max_size=4,
        )
    )
    failures = draw(st.frozensets(st.integers(min_value=1, max_value=6), max_size=2))
    return Scenario(messages, poison, sorted(kills), failures)


def mock_clock() -> trio.testing.MockClock:
    """Return a clock that skips backoffs and intervals but not SQLite's work.

    SQLite runs in worker threads. With a threshold of 0 the clock jumps
    whenever every task waits for such a thread, so timers fire in the middle
    of a write and the scenario no longer resembles any real schedule; after
    50 ms of real idleness a jump is safe.
    """
    return trio.testing.MockClock(autojump_threshold=0.05)


def chaos_config(data_dir: Path, **supervisor: Any) -> Config:
    return build_config(
        {
            "service": {"data_dir": str(data_dir)},
            "feed": {"enabled": False},
            "metrics": {"publish_interval": 0.0},
            "notifier": {"enabled": True},
            # Everything resolved is older than the retention, so the archiver
            # moves trades while the others work.
            "archiver": {"retention_days": 1.0, "interval": 30.0, "chunk_size": 3},
            "logger": {"batch_max": 4, "max_attempts": 3},
            "supervisor": {
                "restart_backoff": 0.01,
                "restart_backoff_max": 0.1,
                "max_restarts": 1000,
                # The mock clock jumps while SQLite works in a thread, so a
                # progress deadline would fire without a real hang.
                "progress_deadline": 1e9,
                **supervisor,
            },
        },
        environ={},
    )


def stored_trades(config: Config) -> tuple[dict[str, TradeRecord], list[str]]:
    """Return every stored trade by id, and the ids found in both files."""
    connection = sqlite3.connect(config.service.database_path)
    try:
        connection.execute("ATTACH DATABASE ? AS archive", (str(config.service.archive_path),))
        main = [row_to_record(r) for r in connection.execute(TRADE_SELECT.format(table="main.trades"))]
        archived = [
            row_to_record(r) for r in connection.execute(TRADE_SELECT.format(table="archive.trades"))
        ]
    finally:
        connection.close()
    both = sorted({r.trade_id for r in main} & {r.trade_id for r in archived})
    return {r.trade_id: r for r in archived + main}, both


def model(messages: list[Message], poison: frozenset[str]) -> dict[str, TradeRecord]:
    records: dict[str, TradeRecord] = {}
    for message in messages:
        if message.key in poison or not isinstance(message, TradeOpened | type(resolved("x", "1")) | type(cancelled("x"))):
            continue
        records[message.key] = apply_trade_message(records.get(message.key), message)  # type: ignore[arg-type]
    return records


async def wait_until(condition: Any, max_polls: int = 100_000) -> None:
    """Poll ``condition`` in mock time.

    A mock-clock timeout would fire whenever every task waits on SQLite's
    worker thread, because the clock jumps to the next deadline then, so
    the bound is a number of polls instead.
    """
    for _ in range(max_polls):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"condition not met after {max_polls} polls")


async def run_scenario(scenario: Scenario, data_dir: Path) -> tuple[Service, FaultPlan, dict[str, int]]:
    config = chaos_config(data_dir)
    plan = FaultPlan(
        failures={"logger.after_commit": scenario.after_commit_failures}, poison=scenario.poison
    )
    active_plan.set(plan)
    service = Service(config)
    kills = {name: 0 for name in KILLABLE}
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        envelopes = []
        pending_kills = list(scenario.kills)
        for index, message in enumerate(scenario.messages):
            envelopes.append(await service.intake.submit(message))
            while pending_kills and pending_kills[0][0] == index:
                _, name = pending_kills.pop(0)
                status = service.supervisor.actors[name]
                await wait_until(lambda: status.state is ActorState.RUNNING)
                restarts = status.restarts
                service.supervisor.kill(name, f"chaos kill after message {index}")
                kills[name] += 1
                await wait_until(lambda: status.restarts > restarts)
            await trio.sleep(0)

        for envelope in envelopes:
            try:
                await wait_until(envelope.committed.is_set)
            except AssertionError:
                raise AssertionError(
                    f"message {envelope.message.key} never acknowledged; status {service.status()}"
                ) from None
        metrics = service.supervisor.actors["metrics"]
        await wait_until(lambda: metrics.state is ActorState.RUNNING and not service.metrics_inbox.depth)
        await trio.sleep(0.1)
        service.stop()
    return service, plan, kills


def check(scenario: Scenario, service: Service, plan: FaultPlan, kills: dict[str, int]) -> None:
    config = service.config
    records, in_both = stored_trades(config)
    expected = model(scenario.messages, scenario.poison)

    # Every acknowledged trade is stored once, as the model predicts, and nothing else is.
    assert in_both == []
    assert sorted(records) == sorted(expected)
    for trade_id, record in expected.items():
        assert records[trade_id] == record, trade_id

    # The dead letters are exactly the poison messages.
    letters = list_dead_letters(config, include_retried=False)
    assert sorted(letter["message"].split('"trade_id":"')[1].split('"')[0] for letter in letters) == sorted(
        scenario.poison
    )

    # The live metrics equal a recomputation from the database.
    _, rebuilt = load_state_sync(config.service.database_path, config.service.archive_path)
    live = dict(service.hub.latest_metrics or {})
    recomputed = rebuilt.snapshot()
    live.pop("generated_at", None)
    recomputed.pop("generated_at", None)
    differences = {
        key: (live.get(key), recomputed.get(key))
        for key in set(live) | set(recomputed)
        if live.get(key) != recomputed.get(key)
    }
    assert differences == {}, differences

    # Restarts match the kills and the injected failures. A kill that arrives
    # while the logger is already failing from poison is moot, as in Erlang,
    # and a kill that lands together with a poison failure makes one restart.
    actors = service.supervisor.actors
    logger = actors["logger"]
    injected = plan.raised["logger.after_commit"] + plan.raised["poison"]
    assert logger.kills <= kills["logger"]
    assert max(logger.kills, injected) <= logger.restarts <= logger.kills + injected
    for name in ("metrics", "notifier", "archiver"):
        assert actors[name].kills == kills[name], name
        assert actors[name].restarts == kills[name], name


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_chaos_loses_nothing(scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory() as folder:
        service, plan, kills = trio.run(run_scenario, scenario, Path(folder), clock=mock_clock())
        check(scenario, service, plan, kills)


def leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def escalate(data_dir: Path) -> None:
    service = Service(chaos_config(data_dir, max_restarts=3, period=60.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        status = service.supervisor.actors["metrics"]
        for _ in range(10):
            await wait_until(lambda: status.state is ActorState.RUNNING)
            restarts = status.restarts
            service.supervisor.kill("metrics", "chaos")
            await wait_until(lambda: status.restarts > restarts)


def test_restart_intensity_escalates(tmp_path: Path) -> None:
    with pytest.RaisesGroup(RestartIntensityExceeded, flatten_subgroups=True) as caught:
        trio.run(escalate, tmp_path, clock=mock_clock())
    error = leaf(caught.value)
    assert isinstance(error, RestartIntensityExceeded)
    assert error.actor == "metrics"
    assert "ActorKilled: chaos" in str(error)
