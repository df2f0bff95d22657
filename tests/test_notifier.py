"""The notifier against a fake Telegram Bot API on 127.0.0.1.

Tests that wait for retry_after or the retry backoff run on trio's MockClock
with autojump, so that a 30-second wait costs no real time. The clock jumps
only when every task is blocked and no socket is ready. The notifier uses no
threads, and on Linux a byte written to a loopback socket is in practice
readable at the other end when the send returns. So the clock does not jump
while a request or reply is on its way. Tests that poll the log use the real
clock and short sleeps instead.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import quote

import pytest
import trio
import trio.testing

from actors.notifier import (
    MAX_RETRY_AFTER,
    MAX_TEXT_LENGTH,
    Notification,
    format_resolved,
    run_notifier,
    truncate_text,
)
from actors.trades import TradeRecord
from supervisor.config import NotifierConfig, Secret
from supervisor.mailbox import DropQueue
from fakes import FakeTelegram, TelegramReply, closed_port_url, start_fake_telegram

TOKEN = "123456789:AAE-secret_Token-value"
CHAT_ID = "42"

# Limit for waits on the real clock (seconds); each test needs well under one.
REAL_TIMEOUT = 5
# Limit for waits on the MockClock (virtual seconds).
VIRTUAL_TIMEOUT = 600


def make_config(api_base: str, **overrides: object) -> NotifierConfig:
    settings: dict[str, object] = {
        "api_base": api_base,
        "bot_token": Secret(TOKEN),
        "chat_id": CHAT_ID,
        "timeout": 5.0,
    }
    settings.update(overrides)
    return NotifierConfig(**settings)  # type: ignore[arg-type]


async def start_notifier(nursery: trio.Nursery, config: NotifierConfig) -> DropQueue[Notification]:
    inbox: DropQueue[Notification] = DropQueue("notifications", 10)
    await nursery.start(run_notifier, config, inbox)
    return inbox


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    while text not in caplog.text:
        await trio.sleep(0.01)


@pytest.fixture
async def telegram(nursery: trio.Nursery) -> FakeTelegram:
    return await start_fake_telegram(nursery, TOKEN)


async def test_delivers_chat_id_and_text(
    nursery: trio.Nursery, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("info", "hello from tradepulse"))
    with trio.fail_after(REAL_TIMEOUT):
        # httpx logs its request line after the reply, so wait for the
        # notifier's own line, which comes later still.
        await wait_for_log(caplog, "sent info notification")

    assert telegram.delivered == [{"chat_id": CHAT_ID, "text": "hello from tradepulse"}]
    assert TOKEN not in caplog.text


async def test_rate_limit_waits_retry_after(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, telegram: FakeTelegram
) -> None:
    telegram.enqueue(TelegramReply(status=429, retry_after=30))
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("alert", "drawdown"))
    with trio.fail_after(VIRTUAL_TIMEOUT):
        first, second = await telegram.wait_for_requests(2)

    assert second.received_at - first.received_at >= 30
    assert second.received_at - first.received_at < 31
    assert [body["text"] for body in telegram.delivered] == ["drawdown"]


async def test_rate_limit_wait_capped(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, telegram: FakeTelegram
) -> None:
    telegram.enqueue(TelegramReply(status=429, retry_after=3600))
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("alert", "drawdown"))
    with trio.fail_after(VIRTUAL_TIMEOUT):
        first, second = await telegram.wait_for_requests(2)

    assert second.received_at - first.received_at >= MAX_RETRY_AFTER
    assert second.received_at - first.received_at < MAX_RETRY_AFTER + 1
    assert len(telegram.delivered) == 1


async def test_server_error_retried(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, telegram: FakeTelegram
) -> None:
    telegram.enqueue(TelegramReply(status=500), TelegramReply(status=502))
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("restart", "logger restarted"))
    with trio.fail_after(VIRTUAL_TIMEOUT):
        await telegram.wait_for_requests(3)

    assert [body["text"] for body in telegram.delivered] == ["logger restarted"]


async def test_server_errors_drop_after_retries(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    telegram: FakeTelegram,
    caplog: pytest.LogCaptureFixture,
) -> None:
    telegram.enqueue(*[TelegramReply(status=503)] * 4)
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("info", "first"))
    inbox.offer(Notification("info", "second"))
    with trio.fail_after(VIRTUAL_TIMEOUT):
        await telegram.wait_for_requests(5)

    assert [body["text"] for body in telegram.received] == ["first"] * 4 + ["second"]
    assert [body["text"] for body in telegram.delivered] == ["second"]
    assert "dropped info notification after 4 failed attempts" in caplog.text


async def test_client_error_dropped_next_sent(
    nursery: trio.Nursery, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    telegram.enqueue(TelegramReply(status=400, description="Bad Request: chat not found"))
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("info", "first"))
    inbox.offer(Notification("info", "second"))
    with trio.fail_after(REAL_TIMEOUT):
        await telegram.wait_for_requests(2)

    assert [body["text"] for body in telegram.received] == ["first", "second"]
    assert [body["text"] for body in telegram.delivered] == ["second"]
    assert "status 400: Bad Request: chat not found" in caplog.text


async def test_no_token_logs_only(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # Nothing listens on this port: a request would fail and log an error.
    config = make_config(closed_port_url(), bot_token=Secret(""))
    inbox = await start_notifier(nursery, config)

    inbox.offer(Notification("resolved", "WIN +1.5 on BTC-15M"))
    with trio.fail_after(REAL_TIMEOUT):
        await wait_for_log(caplog, "notifier: resolved: WIN +1.5 on BTC-15M")

    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_disabled_sends_nothing(
    nursery: trio.Nursery, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    inbox = await start_notifier(nursery, make_config(telegram.api_base, enabled=False))

    inbox.offer(Notification("info", "quiet"))
    with trio.fail_after(REAL_TIMEOUT):
        await wait_for_log(caplog, "notifier: info: quiet")

    assert telegram.requests == []


async def test_token_not_logged_on_refused(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox = await start_notifier(nursery, make_config(closed_port_url()))

    inbox.offer(Notification("alert", "unreachable"))
    with trio.fail_after(VIRTUAL_TIMEOUT):
        await wait_for_log(caplog, "dropped alert notification after 4 failed attempts")

    assert "ConnectError" in caplog.text
    assert TOKEN not in caplog.text
    assert quote(TOKEN, safe="") not in caplog.text


async def test_token_not_logged_on_wrong_token(
    nursery: trio.Nursery, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    telegram.token = "987654321:AAE-other-token"
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("info", "hello"))
    with trio.fail_after(REAL_TIMEOUT):
        await wait_for_log(caplog, "status 401: Unauthorized")

    assert TOKEN not in caplog.text


async def test_token_redacted_in_description(
    nursery: trio.Nursery, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    telegram.enqueue(TelegramReply(status=403, description=f"Forbidden: bot{TOKEN} was blocked"))
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("info", "hello"))
    with trio.fail_after(REAL_TIMEOUT):
        await wait_for_log(caplog, "status 403: Forbidden: bot*** was blocked")

    assert TOKEN not in caplog.text


async def test_long_text_truncated(nursery: trio.Nursery, telegram: FakeTelegram) -> None:
    inbox = await start_notifier(nursery, make_config(telegram.api_base))

    inbox.offer(Notification("insight", "x" * 5000))
    with trio.fail_after(REAL_TIMEOUT):
        await telegram.wait_for_requests(1)

    text = telegram.delivered[0]["text"]
    assert len(text) == MAX_TEXT_LENGTH
    assert text.endswith("…")


def test_truncate_keeps_surrogate_pairs_whole() -> None:
    text = truncate_text("😀" * 3000)

    assert len(text.encode("utf-16-le")) // 2 <= MAX_TEXT_LENGTH
    assert set(text[:-1]) == {"😀"}
    assert text.endswith("…")


def test_truncate_leaves_short_text() -> None:
    assert truncate_text("short") == "short"


def test_format_resolved_win() -> None:
    record = TradeRecord(
        trade_id="t-1",
        status="resolved",
        venue="kalshi",
        market="BTC-15M",
        side="yes",
        size=Decimal("10"),
        entry_price=Decimal("0.45"),
        strategy="momo",
        exit_price=Decimal("1"),
        pnl=Decimal("5.50"),
        outcome="win",
        resolved_at=datetime(2026, 7, 27, 16, 36, tzinfo=UTC),
    )

    assert format_resolved(record) == (
        "WIN +5.50 on BTC-15M (yes 10 @ 0.45 -> 1, strategy momo, kalshi, trade t-1)"
    )


def test_format_resolved_without_opening() -> None:
    record = TradeRecord(trade_id="t-2", status="resolved", pnl=Decimal("-2"))

    assert format_resolved(record) == "LOSS -2 on unknown market (trade t-2)"


def test_notification_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="invalid notification kind 'warning'"):
        Notification("warning", "text")
