"""``tradepulse status`` and ``tradepulse deadletters``."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

import trio
import trio_websocket

from actors.logger import write_batch
from actors.messages import InvalidMessage, Message, format_time, parse_message
from actors.store import DatabaseError, open_database, open_sync
from supervisor.config import Config
from supervisor.intake import decode_json

# Time to wait for the service's status document (seconds).
STATUS_TIMEOUT = 5.0


class AdminError(Exception):
    """A status or dead-letter command failed; the message gives the reason."""


async def fetch_status(config: Config) -> dict[str, Any]:
    """Read the latest status document from the running service's feed."""
    url = f"ws://{config.feed.host}:{config.feed.port}/feed"
    try:
        with trio.fail_after(STATUS_TIMEOUT):
            async with trio_websocket.open_websocket(
                config.feed.host, config.feed.port, "/feed", use_ssl=False
            ) as connection:
                while True:
                    document = decode_json(await connection.get_message())
                    if isinstance(document, dict) and document.get("type") == "status":
                        return document
    except OSError:
        raise AdminError(f"no tradepulse service is listening at {url}; start it with 'tradepulse run'") from None
    except trio.TooSlowError:
        raise AdminError(f"the service at {url} sent no status within {STATUS_TIMEOUT:g} s") from None
    except trio_websocket.HandshakeError as error:
        raise AdminError(f"{url} is not a tradepulse feed ({error})") from None


def format_status(document: dict[str, Any]) -> str:
    rows = [["actor", "state", "restarts", "queue", "last error"]]
    for actor in document["actors"]:
        depth = actor.get("queue_depth")
        rows.append(
            [
                actor["name"],
                actor["state"],
                str(actor["restarts"]),
                "-" if depth is None else str(depth),
                actor.get("last_error") or "",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4] for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * 10)
    dropped = document.get("dropped", {})
    intake = document.get("intake", {})
    lines.append("")
    lines.append(
        f"intake: {intake.get('accepted', 0)} accepted, {intake.get('rejected', 0)} rejected; "
        f"dropped: {dropped.get('notifier', 0)} notifications, {dropped.get('reflection', 0)} reflection inputs"
    )
    return "\n".join(line.rstrip() for line in lines)


def list_dead_letters(config: Config, include_retried: bool) -> list[dict[str, Any]]:
    database = config.service.database_path
    if not database.exists():
        raise DatabaseError(f"no database at {database}; nothing has been stored yet")
    connection = open_sync(database)
    try:
        query = "SELECT letter_id, created_at, actor, message, error, attempts, retried_at FROM dead_letters"
        if not include_retried:
            query += " WHERE retried_at IS NULL"
        rows = connection.execute(query + " ORDER BY letter_id").fetchall()
    finally:
        connection.close()
    columns = ("id", "created_at", "actor", "message", "error", "attempts", "retried_at")
    return [dict(zip(columns, row)) for row in rows]


def format_dead_letters(letters: list[dict[str, Any]]) -> str:
    if not letters:
        return "no dead letters"
    lines = []
    for letter in letters:
        message = json.loads(letter["message"])
        key = message.get("trade_id") or message.get("decision_id") or "?"
        retried = f", retried {letter['retried_at']}" if letter["retried_at"] else ""
        lines.append(
            f"#{letter['id']} {letter['created_at']} {letter['actor']} {message.get('type')} {key} "
            f"after {letter['attempts']} attempts{retried}: {letter['error']}"
        )
    return "\n".join(lines)


async def retry_dead_letters(config: Config, letter_ids: list[int] | None) -> tuple[int, list[str]]:
    """Store the chosen dead letters again; return how many succeeded and the failures.

    With a running service, letters must be retried through its ingest
    endpoint (so that its metrics see them); this function is for a stopped
    service and writes to the database directly.
    """
    letters = [
        letter
        for letter in list_dead_letters(config, include_retried=False)
        if letter_ids is None or letter["id"] in letter_ids
    ]
    if letter_ids is not None:
        missing = set(letter_ids) - {letter["id"] for letter in letters}
        if missing:
            raise AdminError(
                f"no unretried dead letter with id {', '.join(map(str, sorted(missing)))}; "
                "run 'tradepulse deadletters' to list them"
            )
    connection = await open_database(config.service.database_path, config.service.archive_path)
    stored = 0
    failures: list[str] = []
    try:
        for letter in letters:
            try:
                message: Message = parse_message(json.loads(letter["message"]))
                await write_batch(connection, [message])
            except (InvalidMessage, ValueError, sqlite3.Error) as error:
                failures.append(f"#{letter['id']}: {error}")
                continue
            await connection.execute(
                "UPDATE dead_letters SET retried_at = ? WHERE letter_id = ?",
                (format_time(datetime.now(UTC)), letter["id"]),
            )
            await connection.commit()
            stored += 1
    finally:
        await connection.close()
    return stored, failures


async def service_running(config: Config) -> bool:
    """Return True if something accepts TCP connections on the feed port."""
    try:
        stream = await trio.open_tcp_stream(config.feed.host, config.feed.port)
    except OSError:
        return False
    await stream.aclose()
    return True

