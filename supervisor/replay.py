"""``tradepulse replay``: stream a trade log into tradepulse.

When a service is listening on the configured feed port, the log is sent to
its ``/ingest`` endpoint with the ingest token. Otherwise a service is started
in this process, fed directly, and stopped once every message is committed;
its websocket feed runs meanwhile, so that a dashboard can watch the replay.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from actors.logger import Envelope
from actors.messages import Message, dumps, message_to_dict
from importers import ImportResult, RowProblem, event_time, load_trade_log
from supervisor.admin import service_running
from supervisor.config import Config
from supervisor.intake import decode_json
from supervisor.service import Service

# Messages per ingest request when replaying as fast as possible.
BATCH_SIZE = 500

# Ingest requests sent before their replies arrive, at most.
MAX_IN_FLIGHT = 16

# Problems printed one per line before the rest are only counted.
MAX_PROBLEMS_SHOWN = 20


class ReplayError(Exception):
    """The replay could not run (no token, a foreign server on the port, ...)."""


@dataclass
class ReplaySummary:
    file: Path
    format: str
    messages: int
    in_process: bool
    target: str
    accepted: int = 0
    rejected: int = 0
    skipped_rows: int = 0
    errors: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = "an in-process service" if self.in_process else f"the service at {self.target}"
        lines = [
            f"replayed {self.file} ({self.format}) into {where}: {self.accepted} of "
            f"{self.messages} messages accepted, {self.rejected} rejected, "
            f"{self.skipped_rows} malformed rows skipped"
        ]
        lines += [f"  rejected: {error}" for error in self.errors[:MAX_PROBLEMS_SHOWN]]
        return "\n".join(lines)


def _settle(summary: ReplaySummary, envelope: Envelope) -> None:
    """Count a committed message as rejected when the logger found it wrong against its trade."""
    if envelope.rejection is not None:
        summary.accepted -= 1
        summary.rejected += 1
        if len(summary.errors) < MAX_PROBLEMS_SHOWN:
            summary.errors.append(str(envelope.rejection))


class Progress:
    """A one-line progress bar on stderr, redrawn at most every 0.1 s."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.done = 0
        self._last_draw = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = trio.current_time()
        if self.enabled and (now - self._last_draw >= 0.1 or self.done >= self.total):
            self._last_draw = now
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} messages"
            )
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _report_problems(problems: Sequence[RowProblem]) -> None:
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"tradepulse: skipped line {problem.line}: {problem.reason}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(
            f"tradepulse: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more malformed rows",
            file=sys.stderr,
        )


def _chunks(messages: Sequence[Message], speed: float | None) -> list[list[Message]]:
    """Split into requests: big batches at full speed, single messages when paced."""
    size = BATCH_SIZE if speed is None else 1
    return [list(messages[i : i + size]) for i in range(0, len(messages), size)]


async def _wait_for_event_time(
    message: Message, start_event: datetime, start_clock: float, speed: float | None
) -> None:
    if speed is None:
        return
    offset = (event_time(message) - start_event).total_seconds() / speed
    await trio.sleep_until(start_clock + max(offset, 0.0))


def _ingest_token(config: Config) -> str:
    configured = config.service.ingest_token.reveal()
    if configured:
        return configured
    path = config.service.token_path
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        raise ReplayError(
            f"a service is listening on port {config.feed.port} but no ingest token is set; "
            f"set TRADEPULSE_INGEST_TOKEN or run replay from the folder whose {path} the service wrote"
        )
    return token


async def _replay_remote(
    connection: trio_websocket.WebSocketConnection,
    messages: Sequence[Message],
    speed: float | None,
    summary: ReplaySummary,
    progress: Progress,
) -> None:
    requests = _chunks(messages, speed)
    in_flight = trio.Semaphore(MAX_IN_FLIGHT)
    sizes: list[int] = []

    async def send_all() -> None:
        start_event = event_time(messages[0])
        start_clock = trio.current_time()
        for request in requests:
            await _wait_for_event_time(request[0], start_event, start_clock, speed)
            await in_flight.acquire()
            sizes.append(len(request))
            if speed is None:
                await connection.send_message(dumps([message_to_dict(m) for m in request]))
            else:
                await connection.send_message(dumps(message_to_dict(request[0])))

    async def receive_all() -> None:
        for index in range(len(requests)):
            reply = decode_json(await connection.get_message())
            in_flight.release()
            size = sizes[index]
            if "accepted" in reply and isinstance(reply["accepted"], int):
                summary.accepted += reply["accepted"]
                summary.rejected += int(reply.get("rejected_count", len(reply.get("rejected", []))))
                for rejection in reply.get("rejected", []):
                    summary.errors.append(str(rejection.get("error")))
            elif reply.get("status") == "accepted":
                summary.accepted += 1
            else:
                summary.rejected += size
                summary.errors.append(str(reply.get("error")))
            progress.advance(size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        nursery.start_soon(receive_all)


async def _replay_in_process(
    config: Config,
    messages: Sequence[Message],
    speed: float | None,
    summary: ReplaySummary,
    progress: Progress,
) -> None:
    service = Service(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        if service.port is not None:
            print(
                f"tradepulse: in-process service; watch ws://{config.feed.host}:{service.port}/feed",
                file=sys.stderr,
            )
        pending: list[Envelope] = []
        start_event = event_time(messages[0]) if messages else None
        start_clock = trio.current_time()
        for message in messages:
            if start_event is not None:
                await _wait_for_event_time(message, start_event, start_clock, speed)
            pending.append(await service.intake.submit(message))
            summary.accepted += 1
            # Advance the bar as commits land, not as messages are queued.
            while pending and pending[0].committed.is_set():
                _settle(summary, pending.pop(0))
                progress.advance(1)
        for envelope in pending:
            await envelope.committed.wait()
            _settle(summary, envelope)
            progress.advance(1)
        # Give the metrics actor time to publish the final snapshot to the feed.
        while service.metrics_inbox.depth:
            await trio.sleep(0.01)
        await trio.sleep(config.metrics.publish_interval * 2)
        service.stop()


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def replay(
    config: Config,
    path: Path,
    fmt: str | None,
    strategy: str | None,
    speed: float | None,
    show_progress: bool,
) -> ReplaySummary:
    """Import ``path`` and stream its messages into tradepulse."""
    result: ImportResult = await trio.to_thread.run_sync(
        lambda: load_trade_log(path, fmt, strategy=strategy)
    )
    _report_problems(result.problems)
    messages = result.messages
    target = f"ws://{config.feed.host}:{config.feed.port}/ingest"
    progress = Progress(len(messages), show_progress)

    if config.feed.enabled and await service_running(config):
        summary = ReplaySummary(path, result.format, len(messages), False, target)
        summary.skipped_rows = len(result.problems)
        token = _ingest_token(config)
        try:
            async with trio_websocket.open_websocket(
                config.feed.host,
                config.feed.port,
                "/ingest",
                use_ssl=False,
                extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
            ) as connection:
                if messages:
                    await _replay_remote(connection, messages, speed, summary, progress)
        except* trio_websocket.ConnectionRejected as group:
            error = _first_leaf(group)
            assert isinstance(error, trio_websocket.ConnectionRejected)
            if error.status_code == 401:
                raise ReplayError(
                    f"the service at {target} rejected the ingest token; set "
                    "TRADEPULSE_INGEST_TOKEN to the token in the service's data/ingest.token"
                ) from None
            raise ReplayError(
                f"{target} responded with HTTP {error.status_code}; is another program on that port?"
            ) from None
        except* trio_websocket.HandshakeError as group:
            error = _first_leaf(group)
            raise ReplayError(
                f"{target} is not a tradepulse service ({error}); set feed.port to a free port"
            ) from None
        except* trio_websocket.ConnectionClosed as group:
            error = _first_leaf(group)
            assert isinstance(error, trio_websocket.ConnectionClosed)
            raise ReplayError(
                f"the service at {target} closed the connection after {summary.accepted} "
                f"accepted messages ({error.reason}); replaying again is safe, because "
                "storage is idempotent by trade id"
            ) from None
        progress.finish()
        return summary

    summary = ReplaySummary(path, result.format, len(messages), True, target)
    summary.skipped_rows = len(result.problems)
    await _replay_in_process(config, messages, speed, summary, progress)
    progress.finish()
    return summary
