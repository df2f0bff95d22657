"""The notifier actor: sends short notifications to a Telegram chat.

Notifications are best effort. The actor takes them from a ``DropQueue``, so a
slow or unreachable Telegram never blocks the actor that produced them. A
message that fails with an httpx error or an error status, after the retries
below, is logged and dropped instead of raised.

Without a bot token and chat id, or with the notifier disabled, each
notification is written to the log at INFO instead.

The bot token is part of every Bot API URL, so no URL and no unredacted httpx
error text goes into a log line or an exception message.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import trio

from actors.trades import TradeRecord, outcome_of, record_position
from supervisor.config import NotifierConfig
from supervisor.mailbox import DropQueue
from supervisor.supervisor import busy

log = logging.getLogger(__name__)

# httpx logs every request at INFO with its full URL, and a Bot API URL
# contains the bot token. Raising the level here protects every caller that
# configures logging at INFO; a caller that lowers it again will log the token.
logging.getLogger("httpx").setLevel(logging.WARNING)

KINDS = frozenset({"resolved", "restart", "insight", "alert", "info"})

# sendMessage accepts 1-4096 characters of text. Telegram's documentation does
# not say how it counts characters outside the Basic Multilingual Plane, so the
# text is measured in UTF-16 code units, which is never less than code points.
MAX_TEXT_LENGTH = 4096
TRUNCATION_MARK = "…"

# Maximum wait honoured from a 429's parameters.retry_after (seconds).
# Telegram can ask for longer after a burst, but a notification that old is
# of little use, and a longer wait would let the inbox fill and drop more.
MAX_RETRY_AFTER = 60.0
# Wait used when a 429 reply carries no usable retry_after (seconds).
DEFAULT_RETRY_AFTER = 5.0
# 429 replies accepted for one message before it is dropped.
MAX_RATE_LIMIT_WAITS = 5

# Waits before each retry after a 5xx reply or a transport error (seconds).
# There is one retry per entry.
RETRY_BACKOFF = (0.5, 1.0, 2.0)


@dataclass(frozen=True, slots=True)
class Notification:
    """One message for the chat. ``kind`` is one of ``KINDS``."""

    kind: str
    text: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"invalid notification kind {self.kind!r}; use one of {', '.join(sorted(KINDS))}"
            )


def format_resolved(record: TradeRecord) -> str:
    """Describe a resolved trade in one line, for example
    ``WIN +12.50 on BTC-15M (long 10 @ 0.45 -> 1, strategy momo, kalshi, trade t-1)``.
    """
    if record.outcome is not None:
        outcome = record.outcome.upper()
    elif record.pnl is not None:
        outcome = outcome_of(record.pnl).upper()
    else:
        outcome = "RESOLVED"
    pnl = f"{record.pnl:+f}" if record.pnl is not None else "pnl unknown"
    headline = f"{outcome} {pnl} on {record.market or 'unknown market'}"

    details: list[str] = []
    size, entry_price = record.size, record.entry_price
    if record.fills:
        # Several entries: the whole size at its average price.
        combined = record_position(record)
        average = combined.average_entry
        size, entry_price = combined.entered_size, None if average is None else average.normalize()
    if record.side and size is not None and entry_price is not None:
        position = f"{record.side} {size:f} @ {entry_price:f}"
        if record.exit_price is not None:
            position += f" -> {record.exit_price:f}"
        details.append(position)
    if record.strategy:
        details.append(f"strategy {record.strategy}")
    if record.venue:
        details.append(record.venue)
    details.append(f"trade {record.trade_id}")
    return f"{headline} ({', '.join(details)})"


def truncate_text(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """Return ``text`` cut to ``limit`` UTF-16 code units, ending with a mark if cut."""
    encoded = text.encode("utf-16-le")
    if len(encoded) <= 2 * limit:
        return text
    # Keeping limit - 1 units leaves room for the mark, which is one unit.
    # "ignore" drops a surrogate pair that the cut split in half.
    kept = encoded[: 2 * (limit - 1)].decode("utf-16-le", errors="ignore")
    return kept + TRUNCATION_MARK


async def run_notifier(
    config: NotifierConfig,
    inbox: DropQueue[Notification],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Deliver every notification from ``inbox`` until cancelled.

    Reports started to ``task_status`` once it can take notifications. Never
    returns, and no delivery failure ends it.
    """
    if not config.enabled or not config.bot_token or not config.chat_id:
        log.info("notifier: Telegram is disabled or not configured, so notifications go to the log")
        task_status.started()
        while True:
            notification = await inbox.get()
            log.info("notifier: %s: %s", notification.kind, notification.text)

    async with httpx.AsyncClient(timeout=config.timeout) as client:
        telegram = _TelegramChat(client, config)
        log.info("notifier: started, sending to Telegram chat %s", config.chat_id)
        task_status.started()
        while True:
            notification = await inbox.get()
            await telegram.send(notification)


class _TelegramChat:
    """The sendMessage endpoint for one chat, with retries and token redaction."""

    def __init__(self, client: httpx.AsyncClient, config: NotifierConfig) -> None:
        self._client = client
        self._chat_id = config.chat_id
        token = config.bot_token.reveal()
        self._url = f"{config.api_base.rstrip('/')}/bot{token}/sendMessage"
        # The token as it may appear in text: raw, and percent-encoded by a URL.
        self._token_forms = sorted({token, quote(token, safe="")}, key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for form in self._token_forms:
            text = text.replace(form, "***")
        return text

    async def send(self, notification: Notification) -> None:
        """Send one notification, waiting out 429s and retrying 5xx and transport errors.

        Logs and drops the notification when that fails.
        """
        payload = {"chat_id": self._chat_id, "text": truncate_text(notification.text)}
        failures = 0
        rate_limits = 0

        while True:
            try:
                # One request is one unit of work: a Bot API that accepts the
                # connection and never responds makes the actor count as hung.
                with busy():
                    response = await self._client.post(self._url, json=payload)
            except httpx.HTTPError as error:
                failures += 1
                reason = f"{type(error).__name__}: {self._redact(str(error))}"
                if not await self._back_off(notification, failures, reason):
                    return
                continue

            if response.is_success:
                log.debug(
                    "notifier: sent %s notification to chat %s", notification.kind, self._chat_id
                )
                return

            description, retry_after = self._error_details(response)
            if response.status_code == 429:
                rate_limits += 1
                if rate_limits > MAX_RATE_LIMIT_WAITS:
                    log.error(
                        "notifier: dropped %s notification: still rate limited after %d waits (%s)",
                        notification.kind,
                        MAX_RATE_LIMIT_WAITS,
                        description,
                    )
                    return
                wait = min(retry_after, MAX_RETRY_AFTER)
                log.warning(
                    "notifier: rate limited by Telegram (%s); retrying %s notification in %.0f s",
                    description,
                    notification.kind,
                    wait,
                )
                await trio.sleep(wait)
                continue

            if response.status_code >= 500:
                failures += 1
                reason = f"status {response.status_code}: {description}"
                if not await self._back_off(notification, failures, reason):
                    return
                continue

            log.error(
                "notifier: Telegram rejected %s notification for chat %s with status %d: %s; "
                "dropped it",
                notification.kind,
                self._chat_id,
                response.status_code,
                description,
            )
            return

    async def _back_off(self, notification: Notification, failures: int, reason: str) -> bool:
        """Wait before retry number ``failures``; return False when no retry is left."""
        if failures > len(RETRY_BACKOFF):
            log.error(
                "notifier: dropped %s notification after %d failed attempts: %s",
                notification.kind,
                failures,
                reason,
            )
            return False
        delay = RETRY_BACKOFF[failures - 1]
        log.warning(
            "notifier: sendMessage failed (%s); retry %d of %d in %.1f s",
            reason,
            failures,
            len(RETRY_BACKOFF),
            delay,
        )
        await trio.sleep(delay)
        return True

    def _error_details(self, response: httpx.Response) -> tuple[str, float]:
        """Return Telegram's description and its retry_after (seconds) from an error reply."""
        fallback = f"HTTP {response.status_code}"
        try:
            body: Any = response.json()
        except ValueError:
            return fallback, DEFAULT_RETRY_AFTER
        if not isinstance(body, dict):
            return fallback, DEFAULT_RETRY_AFTER

        description = body.get("description")
        if not isinstance(description, str) or not description:
            description = fallback

        retry_after = DEFAULT_RETRY_AFTER
        parameters = body.get("parameters")
        if isinstance(parameters, dict):
            value = parameters.get("retry_after")
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            if is_number and math.isfinite(value) and value >= 0:
                retry_after = float(value)
        return self._redact(description), retry_after
