"""Delivery guarantees: redelivery, dead letters and the fallback journal."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio

from actors.journal import Journal
from actors.logger import Envelope
from helpers import opened, resolved
from supervisor.admin import list_dead_letters, retry_dead_letters
from supervisor.config import Config, build_config
from supervisor.faults import FaultPlan, active_plan
from supervisor.service import Service


def make_config(tmp_path: Path, **logger: Any) -> Config:
    return build_config(
        {
            "service": {"data_dir": str(tmp_path / "data")},
            "feed": {"enabled": False},
            "metrics": {"publish_interval": 0.0},
            "notifier": {"enabled": False},
            "archiver": {"enabled": False},
            "supervisor": {"restart_backoff": 0.01, "restart_backoff_max": 0.05},
            "logger": logger,
        },
        environ={},
    )


def trade_ids(config: Config) -> list[str]:
    connection = sqlite3.connect(config.service.database_path)
    try:
        return [row[0] for row in connection.execute("SELECT trade_id FROM trades ORDER BY trade_id")]
    finally:
        connection.close()


async def submit_all(service: Service, messages: list[Any]) -> list[Envelope]:
    return [await service.intake.submit(message) for message in messages]


async def test_poison_becomes_dead_letter(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_attempts=3)
    token = active_plan.set(FaultPlan(poison={"bad"}))
    try:
        service = Service(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            envelopes = await submit_all(
                service, [opened("a"), opened("bad"), opened("b"), resolved("a", "1")]
            )
            with trio.fail_after(10):
                for envelope in envelopes:
                    await envelope.committed.wait()
            service.stop()
    finally:
        active_plan.reset(token)

    assert trade_ids(config) == ["a", "b"]
    letters = list_dead_letters(config, include_retried=False)
    assert [letter["attempts"] for letter in letters] == [3]
    assert '"trade_id":"bad"' in letters[0]["message"]
    assert "poison message bad" in letters[0]["error"]
    assert service.supervisor.actors["logger"].restarts == 3


async def test_dead_letter_retry_stores_it(tmp_path: Path) -> None:
    await test_poison_becomes_dead_letter(tmp_path)
    config = make_config(tmp_path)
    stored, failures = await retry_dead_letters(config, None)
    assert (stored, failures) == (1, [])
    assert trade_ids(config) == ["a", "b", "bad"]
    assert list_dead_letters(config, include_retried=False) == []
    assert len(list_dead_letters(config, include_retried=True)) == 1


async def test_crash_after_commit_redelivers(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    plan = FaultPlan(failures={"logger.after_commit": {1}})
    token = active_plan.set(plan)
    try:
        service = Service(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            envelopes = await submit_all(service, [opened("a"), resolved("a", "2.5")])
            with trio.fail_after(10):
                for envelope in envelopes:
                    await envelope.committed.wait()
                while (service.hub.latest_metrics or {}).get("resolved") != 1:
                    await trio.sleep(0.01)
            service.stop()
    finally:
        active_plan.reset(token)

    assert plan.raised["logger.after_commit"] == 1
    assert trade_ids(config) == ["a"]
    # The metrics missed the first commit and rebuilt from the database.
    assert service.hub.latest_metrics is not None
    assert service.hub.latest_metrics["realized_pnl"] == 2.5
    assert service.supervisor.actors["logger"].restarts == 1


async def test_locked_database_uses_journal(tmp_path: Path) -> None:
    config = make_config(tmp_path, busy_timeout_ms=20, journal_retry=0.05)
    service = Service(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        # Another process holds the write lock, as a backup tool might.
        blocker = sqlite3.connect(config.service.database_path)
        blocker.execute("BEGIN IMMEDIATE")
        envelopes = await submit_all(service, [opened("a"), opened("b")])
        with trio.fail_after(10):
            for envelope in envelopes:
                await envelope.committed.wait()
        journal = config.logger.journal_path(config.service.database_path)
        journaled = journal.read_text()
        blocker.rollback()
        blocker.close()
        with trio.fail_after(10):
            while journal.stat().st_size:
                await trio.sleep(0.02)
        service.stop()

    assert '"trade_id":"a"' in journaled
    assert '"trade_id":"b"' in journaled
    assert trade_ids(config) == ["a", "b"]
    assert service.supervisor.actors["logger"].restarts == 0
    assert service.hub.latest_metrics is not None
    assert service.hub.latest_metrics["open"] == 2


async def test_journal_replayed_at_start(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    journal = config.logger.journal_path(config.service.database_path)
    journal.parent.mkdir(parents=True)
    Journal(journal).append([opened("from-journal")])
    with open(journal, "a") as file:
        file.write('{"type": "trade_opened", "trade_id": "cut')  # a line cut short by a crash
    service = Service(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        envelope = await service.intake.submit(opened("new"))
        with trio.fail_after(10):
            await envelope.committed.wait()
        service.stop()
    assert trade_ids(config) == ["from-journal", "new"]
    assert journal.read_text() == ""
