"""The reflection actor: requests insights on recent trades from a language model.

After every ``every_resolved`` newly resolved trades, the actor sends a compact
summary of the last ``window`` ones to an OpenAI-compatible chat completions
endpoint and requests JSON with insights and proposed parameter changes. A
valid reply is stored in the ``insights`` table and sent as a notification.

Reflection is advisory and best effort: an unreachable API, an error status or
a malformed reply costs one WARNING line and that round's insights, nothing
more. The actor never applies a proposed parameter change itself.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import sqlite_anyio
import trio
from openai.types.chat import ChatCompletionMessageParam

from actors.messages import dumps, format_time
from actors.notifier import Notification
from actors.store import open_database
from actors.trades import TradeRecord, outcome_of
from supervisor.config import ReflectionConfig
from supervisor.mailbox import DropQueue
from supervisor.supervisor import busy

log = logging.getLogger(__name__)

# Limits on what a reply may contain, stated in the system prompt too. Longer
# items are cut and extra items dropped, so that one verbose reply cannot
# flood the chat or the database.
MAX_INSIGHTS = 8
MAX_PARAMETER_CHANGES = 8
MAX_ITEM_LENGTH = 500

SYSTEM_PROMPT = f"""\
You review the recent results of an automated trading bot.
The user message is a JSON summary of its last resolved trades: totals, figures
per strategy, and one row per trade under "columns" and "rows". Amounts are
decimal strings; pnl is net of fees.

Reply with one JSON object and nothing else, of this form:
{{"insights": [string, ...],
 "parameter_changes": [{{"parameter": string, "current": number or null,
                        "proposed": number, "reason": string}}, ...]}}

"insights" holds at most {MAX_INSIGHTS} short, concrete observations that the data
supports, such as a strategy or market that loses money, or a pattern in the
losing trades. "parameter_changes" holds at most {MAX_PARAMETER_CHANGES} proposed changes
to the bot's numeric parameters (thresholds, sizes, limits); "current" is null
when the summary does not show the current value. Propose a change only when
the data supports it, and leave the list empty otherwise. Each string stays
under {MAX_ITEM_LENGTH} characters.
"""

# Trade fields sent as one row per trade, in this order.
ROW_COLUMNS = (
    "trade_id",
    "strategy",
    "venue",
    "market",
    "side",
    "size",
    "entry_price",
    "exit_price",
    "pnl",
    "outcome",
    "probability",
    "signal_type",
    "resolved_at",
)

INSERT_INSIGHT = (
    "INSERT INTO insights (created_at, model, resolved_count, insights, parameter_changes) "
    "VALUES (?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class Insights:
    """A model's reply: observations, and proposed changes to bot parameters.

    Each parameter change has the keys ``parameter`` (str), ``current``
    (float or None), ``proposed`` (float) and ``reason`` (str).
    """

    insights: list[str] = field(default_factory=list)
    parameter_changes: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Insights:
        return cls([], [])

    def is_empty(self) -> bool:
        return not self.insights and not self.parameter_changes


class InvalidReply(ValueError):
    """A model reply that is not the requested JSON object."""


# ---------------------------------------------------------------------------
# The prompt


def summarize_trades(records: Sequence[TradeRecord]) -> dict[str, Any]:
    """Summarize resolved trades for the prompt, with Decimals as strings."""
    totals = _Tally()
    by_strategy: dict[str, _Tally] = {}
    for record in records:
        totals.add(record)
        by_strategy.setdefault(record.strategy or "unknown", _Tally()).add(record)

    rows = [[_cell(getattr(record, name)) for name in ROW_COLUMNS] for record in records]
    return {
        **totals.to_dict(),
        "strategies": {name: tally.to_dict() for name, tally in sorted(by_strategy.items())},
        "columns": list(ROW_COLUMNS),
        "rows": rows,
    }


@dataclass
class _Tally:
    trades: int = 0
    wins: int = 0
    losses: int = 0
    draws: int = 0
    pnl: Decimal = Decimal(0)

    def add(self, record: TradeRecord) -> None:
        pnl = record.pnl if record.pnl is not None else Decimal(0)
        outcome = record.outcome or outcome_of(pnl)
        self.trades += 1
        self.pnl += pnl
        if outcome == "win":
            self.wins += 1
        elif outcome == "loss":
            self.losses += 1
        else:
            self.draws += 1

    def to_dict(self) -> dict[str, Any]:
        decided = self.wins + self.losses
        # Draws are left out of the win rate: they neither win nor lose money.
        win_rate = round(self.wins / decided, 3) if decided else None
        return {
            "trades": self.trades,
            "wins": self.wins,
            "losses": self.losses,
            "draws": self.draws,
            "total_pnl": str(self.pnl),
            "win_rate": win_rate,
        }


def _cell(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return format_time(value)
    return value


# ---------------------------------------------------------------------------
# The reply


def parse_reply(content: str | None) -> Insights:
    """Validate a model reply and return its insights.

    Raises ``InvalidReply`` (or ``json.JSONDecodeError``) when the reply is not
    a JSON object with an ``insights`` list of strings. A missing
    ``parameter_changes`` counts as none; a malformed change is dropped with a
    WARNING line and the rest are kept.
    """
    if content is None:
        raise InvalidReply("the reply has no message content")
    data = json.loads(content)
    if not isinstance(data, dict):
        raise InvalidReply(f"the reply is a JSON {type(data).__name__}, not an object")

    raw_insights = data.get("insights")
    if not isinstance(raw_insights, list):
        raise InvalidReply(f"'insights' must be a list, got {_preview(raw_insights)}")
    insights: list[str] = []
    for index, item in enumerate(raw_insights):
        if not isinstance(item, str):
            raise InvalidReply(f"insights[{index}] must be a string, got {_preview(item)}")
        if item.strip():
            insights.append(item.strip()[:MAX_ITEM_LENGTH])

    raw_changes = data.get("parameter_changes", [])
    if not isinstance(raw_changes, list):
        raise InvalidReply(f"'parameter_changes' must be a list, got {_preview(raw_changes)}")
    changes: list[dict[str, Any]] = []
    for index, item in enumerate(raw_changes):
        try:
            changes.append(_parameter_change(item))
        except InvalidReply as error:
            log.warning("reflection: dropped parameter_changes[%d]: %s", index, error)

    return Insights(insights[:MAX_INSIGHTS], changes[:MAX_PARAMETER_CHANGES])


def _parameter_change(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidReply(f"must be an object, got {_preview(item)}")
    parameter = item.get("parameter")
    if not isinstance(parameter, str) or not parameter.strip():
        raise InvalidReply(f"'parameter' must be a non-empty string, got {_preview(parameter)}")
    current = item.get("current")
    if current is not None and not _is_number(current):
        raise InvalidReply(f"'current' must be a number or null, got {_preview(current)}")
    proposed = item.get("proposed")
    if not _is_number(proposed):
        raise InvalidReply(f"'proposed' must be a number, got {_preview(proposed)}")
    reason = item.get("reason")
    if not isinstance(reason, str):
        raise InvalidReply(f"'reason' must be a string, got {_preview(reason)}")
    return {
        "parameter": parameter.strip()[:MAX_ITEM_LENGTH],
        "current": float(current) if current is not None else None,
        "proposed": float(proposed),
        "reason": reason.strip()[:MAX_ITEM_LENGTH],
    }


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _preview(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


# ---------------------------------------------------------------------------
# The request


async def reflect(
    client: openai.AsyncOpenAI, model: str, records: Sequence[TradeRecord]
) -> Insights:
    """Ask ``model`` for insights on ``records``.

    Returns ``Insights.empty()`` without a request when ``records`` is empty.
    An API, network or reply error is logged as one WARNING line and also
    gives ``Insights.empty()``; other exceptions propagate.
    """
    if not records:
        return Insights.empty()
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": dumps(summarize_trades(records))},
    ]

    try:
        completion = await client.chat.completions.create(
            model=model,
            messages=messages,
            response_format={"type": "json_object"},
        )
        if not completion.choices:
            raise InvalidReply("the reply has no choices")
        return parse_reply(completion.choices[0].message.content)
    # APITimeoutError is a subclass of APIConnectionError, so it comes first.
    except openai.APITimeoutError:
        log.warning(
            "reflection: request to %s timed out after %s s; no insights this round",
            client.base_url,
            client.timeout,
        )
    except openai.APIConnectionError as error:
        cause = error.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
        log.warning(
            "reflection: cannot connect to %s (%s); no insights this round",
            client.base_url,
            _redact(detail, client.api_key),
        )
    except openai.APIStatusError as error:
        # Only the code and type of the error body are logged, because the
        # message of the real API's 401 quotes the presented key, partly masked.
        log.warning(
            "reflection: %s replied with status %d (code %s, type %s, request id %s); "
            "no insights this round",
            client.base_url,
            error.status_code,
            error.code,
            error.type,
            error.request_id,
        )
    except openai.APIError as error:
        # Remaining API errors, such as a 200 reply whose body is not a completion.
        log.warning(
            "reflection: invalid response from %s (%s); no insights this round",
            client.base_url,
            type(error).__name__,
        )
    except (json.JSONDecodeError, InvalidReply) as error:
        log.warning(
            "reflection: model %s returned an invalid reply (%s); no insights this round",
            model,
            _redact(str(error), client.api_key),
        )
    return Insights.empty()


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


# ---------------------------------------------------------------------------
# The actor


def format_insights(insights: Insights, trade_count: int) -> str:
    """Write insights as a chat message."""
    lines = [f"Reflection on the last {trade_count} resolved trades:"]
    lines += [f"• {item}" for item in insights.insights]
    if insights.parameter_changes:
        lines.append("Proposed parameter changes:")
        for change in insights.parameter_changes:
            current = "?" if change["current"] is None else f"{change['current']:g}"
            proposed = f"{change['proposed']:g}"
            lines.append(f"• {change['parameter']}: {current} -> {proposed} ({change['reason']})")
    return "\n".join(lines)


async def store_insights(
    connection: sqlite_anyio.Connection, model: str, trade_count: int, insights: Insights
) -> None:
    """Insert one row into the ``insights`` table and commit it."""
    await connection.execute(
        INSERT_INSIGHT,
        (
            format_time(datetime.now(UTC)),
            model,
            trade_count,
            json.dumps(insights.insights),
            json.dumps(insights.parameter_changes),
        ),
    )
    await connection.commit()


async def run_reflection(
    config: ReflectionConfig,
    inbox: DropQueue[TradeRecord],
    database: Path,
    notify: Callable[[Notification], bool],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reflect on resolved trades from ``inbox`` until cancelled.

    ``notify`` queues a notification and returns False when it was dropped.
    Without an API key, or when disabled, the actor only drains ``inbox``.
    """
    if not config.enabled or not config.api_key:
        log.info("reflection: disabled or no API key; resolved trades are not reviewed")
        task_status.started()
        while True:
            await inbox.get()

    connection = await open_database(database)
    try:
        async with openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key.reveal(),
            timeout=config.timeout,
            max_retries=config.max_retries,
        ) as client:
            log.info(
                "reflection: started with model %s at %s, every %d resolved trades",
                config.model,
                config.base_url,
                config.every_resolved,
            )
            task_status.started()
            await _reflect_forever(config, inbox, database, connection, client, notify)
    finally:
        # Closing must finish even when the actor is being cancelled.
        with trio.CancelScope(shield=True):
            await connection.close()


async def _reflect_forever(
    config: ReflectionConfig,
    inbox: DropQueue[TradeRecord],
    database: Path,
    connection: sqlite_anyio.Connection,
    client: openai.AsyncOpenAI,
    notify: Callable[[Notification], bool],
) -> None:
    window: deque[TradeRecord] = deque(maxlen=config.window)
    since_last = 0
    while True:
        record = await inbox.get()
        if record.status != "resolved":
            log.debug("reflection: skipped trade %s with status %s", record.trade_id, record.status)
            continue
        window.append(record)
        since_last += 1
        if since_last < config.every_resolved:
            continue
        since_last = 0

        records = list(window)
        # The client's timeout applies to each attempt; this deadline makes
        # config.timeout the limit for the whole request, retries included.
        with trio.move_on_after(config.timeout) as deadline:
            with busy():
                insights = await reflect(client, config.model, records)
        if deadline.cancelled_caught:
            log.warning(
                "reflection: request to %s timed out after %s s, retries included; "
                "no insights this round",
                config.base_url,
                config.timeout,
            )
            continue
        if insights.is_empty():
            continue

        # A failed insert still leaves the insights worth sending.
        try:
            await store_insights(connection, config.model, len(records), insights)
        except sqlite3.Error as error:
            log.error("reflection: failed to store insights in %s: %s", database, error)
        else:
            log.info(
                "reflection: stored %d insights and %d parameter changes from %d trades",
                len(insights.insights),
                len(insights.parameter_changes),
                len(records),
            )

        if not notify(Notification("insight", format_insights(insights, len(records)))):
            log.warning("reflection: notification queue is full; insight notification dropped")
