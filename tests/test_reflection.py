"""The reflection actor against a fake OpenAI API on 127.0.0.1 and a real SQLite file.

These tests run on the real clock. A MockClock with autojump jumps to the
next deadline whenever every task waits for a worker thread. Both sqlite-anyio
and the openai client run work in threads, so a request timeout could fire at
once. Timeouts are kept to fractions of a second instead.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from actors.notifier import Notification
from actors.reflection import (
    SYSTEM_PROMPT,
    InvalidReply,
    parse_reply,
    reflect,
    run_reflection,
    summarize_trades,
)
from actors.trades import TradeRecord, outcome_of
from fakes import ChatReply, FakeOpenAI, closed_port_url, start_fake_openai
from supervisor.config import ReflectionConfig, Secret
from supervisor.mailbox import DropQueue

API_KEY = "sk-test-Reflection-SECRET-0123456789"
MODEL = "test-model"
EVERY = 3

# Limit for waits in a test (seconds); each needs well under one.
WAIT_LIMIT = 5

GOOD_REPLY = json.dumps(
    {
        "insights": ["Strategy momo loses on BTC-15M after 20:00 UTC."],
        "parameter_changes": [
            {
                "parameter": "min_edge",
                "current": 0.02,
                "proposed": 0.04,
                "reason": "losses cluster at small edges",
            }
        ],
    }
)


def resolved_trade(index: int, pnl: str = "1.50", strategy: str = "momo") -> TradeRecord:
    opened_at = datetime(2026, 7, 27, 16, 0, tzinfo=UTC) + timedelta(minutes=15 * index)
    return TradeRecord(
        trade_id=f"t-{index}",
        status="resolved",
        venue="kalshi",
        market="BTC-15M",
        side="yes",
        size=Decimal("10"),
        entry_price=Decimal("0.45"),
        strategy=strategy,
        opened_at=opened_at,
        exit_price=Decimal("1"),
        pnl=Decimal(pnl),
        outcome=outcome_of(Decimal(pnl)),
        resolved_at=opened_at + timedelta(minutes=15),
    )


def make_config(base_url: str, **overrides: object) -> ReflectionConfig:
    settings: dict[str, object] = {
        "base_url": base_url,
        "api_key": Secret(API_KEY),
        "model": MODEL,
        "every_resolved": EVERY,
        "window": 5,
        "timeout": 2.0,
        "max_retries": 0,
    }
    settings.update(overrides)
    return ReflectionConfig(**settings)  # type: ignore[arg-type]


class Actor:
    """A running reflection actor with its inbox, database and notifications."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.inbox: DropQueue[TradeRecord] = DropQueue("reflection", 100)
        self.notifications: list[Notification] = []
        self.sent = 0

    def notify(self, notification: Notification) -> bool:
        self.notifications.append(notification)
        return True

    def send_trades(self, count: int) -> None:
        for _ in range(count):
            self.inbox.offer(resolved_trade(self.sent))
            self.sent += 1

    def insight_rows(self) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.database)
        try:
            return connection.execute(
                "SELECT created_at, model, resolved_count, insights, parameter_changes "
                "FROM insights ORDER BY insight_id"
            ).fetchall()
        finally:
            connection.close()

    async def wait_for_notifications(self, count: int) -> None:
        while len(self.notifications) < count:
            await trio.sleep(0.01)


async def start_actor(nursery: trio.Nursery, config: ReflectionConfig, tmp_path: Path) -> Actor:
    actor = Actor(tmp_path / "data" / "tradepulse.sqlite")
    await nursery.start(run_reflection, config, actor.inbox, actor.database, actor.notify)
    return actor


def reflection_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "actors.reflection" and record.levelno == logging.WARNING
    ]


async def wait_for_warnings(caplog: pytest.LogCaptureFixture, count: int) -> None:
    while len(reflection_warnings(caplog)) < count:
        await trio.sleep(0.01)


@pytest.fixture
async def fake_openai(nursery: trio.Nursery) -> FakeOpenAI:
    return await start_fake_openai(nursery, api_key=API_KEY)


@pytest.fixture(autouse=True)
def key_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Check every test's log, at DEBUG, for the API key."""
    caplog.set_level(logging.DEBUG)
    yield
    # caplog.text holds only the current phase, which is teardown here.
    formatter = logging.Formatter()
    records = caplog.get_records("setup") + caplog.get_records("call")
    logged = "\n".join(formatter.format(record) for record in records)
    assert API_KEY not in logged


# ---------------------------------------------------------------------------
# The actor


async def test_good_reply_stored_and_notified(
    nursery: trio.Nursery, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.enqueue(ChatReply(content=GOOD_REPLY))
    actor = await start_actor(nursery, make_config(fake_openai.base_url), tmp_path)

    actor.send_trades(EVERY)
    with trio.fail_after(WAIT_LIMIT):
        await actor.wait_for_notifications(1)

    [(created_at, model, resolved_count, insights, changes)] = actor.insight_rows()
    assert created_at.endswith("Z")
    assert model == MODEL
    assert resolved_count == EVERY
    assert json.loads(insights) == ["Strategy momo loses on BTC-15M after 20:00 UTC."]
    assert json.loads(changes) == [
        {
            "parameter": "min_edge",
            "current": 0.02,
            "proposed": 0.04,
            "reason": "losses cluster at small edges",
        }
    ]

    [notification] = actor.notifications
    assert notification.kind == "insight"
    assert "Strategy momo loses on BTC-15M" in notification.text
    assert "min_edge: 0.02 -> 0.04" in notification.text


async def test_request_asks_for_json(
    nursery: trio.Nursery, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.enqueue(ChatReply(content=GOOD_REPLY))
    actor = await start_actor(nursery, make_config(fake_openai.base_url), tmp_path)

    actor.send_trades(EVERY)
    with trio.fail_after(WAIT_LIMIT):
        await fake_openai.wait_for_requests(1)

    [body] = fake_openai.completions
    assert body["model"] == MODEL
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    summary = json.loads(body["messages"][1]["content"])
    assert summary["trades"] == EVERY
    assert [row[0] for row in summary["rows"]] == ["t-0", "t-1", "t-2"]


async def test_every_resolved_and_window(
    nursery: trio.Nursery, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.default = ChatReply(content=GOOD_REPLY)
    actor = await start_actor(nursery, make_config(fake_openai.base_url), tmp_path)

    actor.send_trades(2 * EVERY + 1)
    with trio.fail_after(WAIT_LIMIT):
        await actor.wait_for_notifications(2)

    first, second = fake_openai.completions
    first_rows = json.loads(first["messages"][1]["content"])["rows"]
    second_rows = json.loads(second["messages"][1]["content"])["rows"]
    assert [row[0] for row in first_rows] == ["t-0", "t-1", "t-2"]
    # The window keeps the last 5 of the 6 trades received by then.
    assert [row[0] for row in second_rows] == ["t-1", "t-2", "t-3", "t-4", "t-5"]
    assert [row[2] for row in actor.insight_rows()] == [3, 5]


async def test_open_trades_not_counted(
    nursery: trio.Nursery, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.default = ChatReply(content=GOOD_REPLY)
    actor = await start_actor(nursery, make_config(fake_openai.base_url), tmp_path)

    # Counting the open trades would start a round at the first resolved one.
    for index in range(EVERY - 1):
        actor.inbox.offer(TradeRecord(trade_id=f"open-{index}", status="open"))
    actor.send_trades(EVERY)
    with trio.fail_after(WAIT_LIMIT):
        await actor.wait_for_notifications(1)

    [body] = fake_openai.completions
    rows = json.loads(body["messages"][1]["content"])["rows"]
    assert [row[0] for row in rows] == ["t-0", "t-1", "t-2"]


FAILURES = {
    "status 500": (ChatReply(status=500), "replied with status 500"),
    "invalid JSON": (ChatReply(content="Sure! Here are insights:"), "invalid reply"),
    "wrong shape": (ChatReply(content='{"insights": "one"}'), "'insights' must be a list"),
    "JSON array": (ChatReply(content="[]"), "not an object"),
    "timeout": (ChatReply(content=GOOD_REPLY, delay=2), "timed out after 0.3 s"),
}


@pytest.mark.parametrize("reply, warning", FAILURES.values(), ids=FAILURES.keys())
async def test_failure_skips_round_then_recovers(
    nursery: trio.Nursery,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    reply: ChatReply,
    warning: str,
) -> None:
    fake_openai.enqueue(reply, ChatReply(content=GOOD_REPLY))
    config = make_config(fake_openai.base_url, timeout=0.3)
    actor = await start_actor(nursery, config, tmp_path)

    actor.send_trades(EVERY)
    with trio.fail_after(WAIT_LIMIT):
        await wait_for_warnings(caplog, 1)

    [message] = reflection_warnings(caplog)
    assert warning in message
    assert actor.insight_rows() == []
    assert actor.notifications == []

    actor.send_trades(EVERY)
    with trio.fail_after(WAIT_LIMIT):
        await actor.wait_for_notifications(1)

    assert len(actor.insight_rows()) == 1
    assert len(reflection_warnings(caplog)) == 1


async def test_connection_refused_skips_round(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    actor = await start_actor(nursery, make_config(closed_port_url() + "/v1"), tmp_path)

    actor.send_trades(EVERY)
    with trio.fail_after(WAIT_LIMIT):
        await wait_for_warnings(caplog, 1)
    actor.send_trades(EVERY)
    with trio.fail_after(WAIT_LIMIT):
        await wait_for_warnings(caplog, 2)

    assert all("cannot connect to" in message for message in reflection_warnings(caplog))
    assert actor.insight_rows() == []
    assert actor.notifications == []


async def test_disabled_without_key(
    nursery: trio.Nursery, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    config = make_config(fake_openai.base_url, api_key=Secret(""))
    actor = await start_actor(nursery, config, tmp_path)

    actor.send_trades(EVERY)
    with trio.fail_after(WAIT_LIMIT):
        while actor.inbox.depth:
            await trio.sleep(0.01)
    await trio.sleep(0.05)

    assert fake_openai.requests == []
    assert not actor.database.exists()


# ---------------------------------------------------------------------------
# One request


def make_client(base_url: str, api_key: str = API_KEY, timeout: float = 2.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)


async def test_reflect_returns_insights(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(ChatReply(content=GOOD_REPLY))
    async with make_client(fake_openai.base_url) as client:
        insights = await reflect(client, MODEL, [resolved_trade(0)])

    assert insights.insights == ["Strategy momo loses on BTC-15M after 20:00 UTC."]
    assert [change["parameter"] for change in insights.parameter_changes] == ["min_edge"]


async def test_reflect_timeout_empty(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.enqueue(ChatReply(content=GOOD_REPLY, delay=2))
    async with make_client(fake_openai.base_url, timeout=0.2) as client:
        insights = await reflect(client, MODEL, [resolved_trade(0)])

    assert insights.is_empty()
    [message] = reflection_warnings(caplog)
    assert "timed out" in message


async def test_reflect_refused_empty(caplog: pytest.LogCaptureFixture) -> None:
    async with make_client(closed_port_url() + "/v1") as client:
        insights = await reflect(client, MODEL, [resolved_trade(0)])

    assert insights.is_empty()
    [message] = reflection_warnings(caplog)
    assert "cannot connect to http://127.0.0.1:" in message


async def test_reflect_wrong_key_not_logged(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # The fake's 401 message quotes the key it was given, so the key reaches
    # the exception. The autouse fixture checks that it never reaches the log.
    fake_openai.api_key = "sk-the-right-key"
    async with make_client(fake_openai.base_url) as client:
        insights = await reflect(client, MODEL, [resolved_trade(0)])

    assert insights.is_empty()
    [message] = reflection_warnings(caplog)
    assert "status 401" in message
    assert "invalid_api_key" in message


async def test_reflect_without_trades_sends_nothing(fake_openai: FakeOpenAI) -> None:
    async with make_client(fake_openai.base_url) as client:
        insights = await reflect(client, MODEL, [])

    assert insights.is_empty()
    assert fake_openai.requests == []


# ---------------------------------------------------------------------------
# Reply validation and the summary


def test_parse_drops_malformed_change(caplog: pytest.LogCaptureFixture) -> None:
    content = json.dumps(
        {
            "insights": ["ok"],
            "parameter_changes": [
                {"parameter": "stake", "current": None, "proposed": 5, "reason": "r"},
                {"parameter": "stake", "proposed": True, "reason": "bool is no number"},
                {"parameter": "", "proposed": 1, "reason": "no name"},
                {"parameter": "edge", "proposed": "0.1", "reason": "string number"},
                "not an object",
            ],
        }
    )

    insights = parse_reply(content)

    assert insights.parameter_changes == [
        {"parameter": "stake", "current": None, "proposed": 5.0, "reason": "r"}
    ]
    assert len(reflection_warnings(caplog)) == 4


def test_parse_missing_changes_means_none() -> None:
    insights = parse_reply('{"insights": ["a", "  ", "b"]}')

    assert insights.insights == ["a", "b"]
    assert insights.parameter_changes == []


@pytest.mark.parametrize(
    "content",
    [
        None,
        '{"parameter_changes": []}',
        '{"insights": [1]}',
        '{"insights": [], "parameter_changes": {}}',
    ],
)
def test_parse_rejects_bad_shape(content: str | None) -> None:
    with pytest.raises(InvalidReply):
        parse_reply(content)


def test_summary_figures() -> None:
    records = [
        resolved_trade(0, "2.50"),
        resolved_trade(1, "-1.25"),
        resolved_trade(2, "0", strategy="fade"),
        resolved_trade(3, "0.75", strategy="fade"),
    ]

    summary = summarize_trades(records)

    assert (summary["trades"], summary["wins"], summary["losses"], summary["draws"]) == (4, 2, 1, 1)
    assert summary["total_pnl"] == "2.00"
    assert summary["win_rate"] == 0.667
    assert summary["strategies"]["momo"]["total_pnl"] == "1.25"
    assert summary["strategies"]["fade"]["win_rate"] == 1.0
    pnl_column = summary["columns"].index("pnl")
    assert [row[pnl_column] for row in summary["rows"]] == ["2.50", "-1.25", "0", "0.75"]
