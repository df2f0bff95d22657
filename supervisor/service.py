"""The service: the queues, the actors and the order they start and stop in.

Data flow::

    bot --/ingest--> Intake --Mailbox--> logger --commit--> metrics --> feed
                                           |                 (Backlog)
                                           +--> notifier, reflection (DropQueue)

The service owns every queue, so that an actor restart never loses what was
queued for it. Shutdown closes the intake first, lets the logger commit what
was accepted, then stops the actors in reverse start order.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import trio

from actors.archiver import run_archiver
from actors.feed import FeedHub, run_feed_server
from actors.logger import Committed, Envelope, run_logger
from actors.metrics import run_metrics
from actors.notifier import Notification, format_resolved, run_notifier
from actors.reflection import run_reflection
from actors.store import DatabaseError, open_sync, prepare_archive_sync
from actors.trades import TradeRecord
from supervisor.config import Config
from supervisor.intake import Intake
from supervisor.mailbox import Backlog, DropQueue, Mailbox
from supervisor.supervisor import ChildSpec, Strategy, Supervisor

log = logging.getLogger(__name__)

# Interval at which shutdown checks whether a queue has drained (seconds).
_DRAIN_POLL = 0.01

# Minimum time between two status documents on the feed, and the longest
# time before counts and queue depths in it are refreshed (seconds).
_STATUS_INTERVAL = 0.5
_STATUS_REFRESH = 1.0


def load_or_create_token(path: Path) -> str:
    """Return the ingest token stored at ``path``, creating it if missing.

    The file is created with mode 0600 so that only its owner can read it.
    """
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    except OSError as error:
        raise DatabaseError(f"cannot read the ingest token file {path}: {error.strerror}") from None
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(token + "\n")
    except OSError as error:
        raise DatabaseError(f"cannot write the ingest token file {path}: {error.strerror}") from None
    return token


class Service:
    """One tradepulse instance: call ``run`` in a nursery, ``stop`` to end it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.logger_inbox: Mailbox[Envelope] = Mailbox("logger", config.logger.queue_size)
        self.metrics_inbox: Backlog[Committed] = Backlog("metrics")
        self.notifications: DropQueue[Notification] = DropQueue(
            "notifier", config.notifier.queue_size
        )
        self.reflection_inbox: DropQueue[TradeRecord] = DropQueue(
            "reflection", config.reflection.queue_size
        )
        self.hub = FeedHub(config.feed.client_queue)
        self.intake = Intake(self.logger_inbox)
        self.supervisor = Supervisor(
            config.supervisor,
            on_restart=self._on_restart,
            strategy=Strategy(config.supervisor.strategy),
        )
        self.port: int | None = None
        self.ingest_token = ""
        self._stop_requested = trio.Event()
        # Sequence number of the last transaction passed on to metrics.
        self._last_seq: int | None = None
        self.stopped = trio.Event()

    # -- wiring ---------------------------------------------------------------

    def _on_commit(self, committed: Committed) -> None:
        missed = committed.seq > self._last_seq + 1 if self._last_seq is not None else False
        if missed or (committed.resync and committed.seq != self._last_seq):
            # The logger failed between a commit and this notification. Metrics
            # notices the gap in the sequence and rebuilds from the database;
            # the notifier and reflection miss those trades.
            log.warning(
                "service: commits after %s up to %d were not passed on; metrics will rebuild",
                self._last_seq,
                committed.seq,
            )
        self._last_seq = committed.seq
        if self.config.metrics.enabled:
            self.metrics_inbox.put(committed)
        for record in committed.newly_resolved:
            if self.config.notifier.enabled and self.config.notifier.notify_resolved:
                self.notifications.offer(Notification("resolved", format_resolved(record)))
            if self.config.reflection_active:
                self.reflection_inbox.offer(record)

    def _on_logger_event(self, text: str) -> None:
        self._notify(Notification("alert", f"tradepulse: {text}"))

    def _on_restart(self, actor: str, error: str) -> None:
        if self.config.notifier.enabled and actor != "notifier":
            self.notifications.offer(
                Notification("restart", f"tradepulse: actor {actor} failed and was restarted: {error}")
            )

    def _notify(self, notification: Notification) -> bool:
        if not self.config.notifier.enabled:
            return False
        return self.notifications.offer(notification)

    def status(self) -> dict[str, Any]:
        """Actor states and queue depths, as published on the feed."""
        return {
            "type": "status",
            "actors": self.supervisor.status(),
            "queues": {
                "logger": self.logger_inbox.depth,
                "metrics": self.metrics_inbox.depth,
                "notifier": self.notifications.depth,
                "reflection": self.reflection_inbox.depth,
            },
            "dropped": {
                "notifier": self.notifications.dropped,
                "reflection": self.reflection_inbox.dropped,
            },
            "intake": {"accepted": self.intake.accepted, "rejected": self.intake.rejected},
        }

    # -- lifecycle ------------------------------------------------------------

    def _prepare(self) -> None:
        """Create the data folder and migrate both databases, or raise ``DatabaseError``."""
        service = self.config.service
        try:
            # Trades and the token are private to the user running the service.
            service.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise DatabaseError(
                f"cannot create data folder {service.data_dir}: {error.strerror}"
            ) from None
        connection = open_sync(service.database_path)
        try:
            self._last_seq = int(connection.execute("SELECT seq FROM commit_sequence").fetchone()[0])
        finally:
            connection.close()
        prepare_archive_sync(service.archive_path)
        configured = service.ingest_token.reveal()
        self.ingest_token = configured or load_or_create_token(service.token_path)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every enabled actor, serve until ``stop``, then shut down in order."""
        config = self.config
        database = config.service.database_path
        archive = config.service.archive_path
        await trio.to_thread.run_sync(self._prepare)

        deadline = config.supervisor.progress_deadline
        grace = config.supervisor.shutdown_grace
        specs = [
            ChildSpec(
                "logger",
                functools.partial(
                    run_logger,
                    config.logger,
                    self.logger_inbox,
                    database,
                    archive,
                    self._on_commit,
                    self._on_logger_event,
                ),
                shutdown_grace=grace,
                progress_deadline=deadline,
                queue_depth=lambda: self.logger_inbox.depth,
            )
        ]
        if config.metrics.enabled:
            specs.append(
                ChildSpec(
                    "metrics",
                    functools.partial(
                        run_metrics, config.metrics, self.metrics_inbox, database, archive, self.hub.publish
                    ),
                    shutdown_grace=grace,
                    progress_deadline=deadline,
                    queue_depth=lambda: self.metrics_inbox.depth,
                )
            )
        if config.notifier.enabled:
            specs.append(
                ChildSpec(
                    "notifier",
                    functools.partial(run_notifier, config.notifier, self.notifications),
                    # Notifications are best effort: a short grace keeps a dead
                    # Telegram from delaying the shutdown.
                    shutdown_grace=min(grace, 2.0),
                    progress_deadline=deadline,
                    queue_depth=lambda: self.notifications.depth,
                )
            )
        if config.reflection_active:
            specs.append(
                ChildSpec(
                    "reflection",
                    functools.partial(
                        run_reflection, config.reflection, self.reflection_inbox, database, self._notify
                    ),
                    shutdown_grace=0.0,
                    progress_deadline=deadline,
                    queue_depth=lambda: self.reflection_inbox.depth,
                )
            )
        elif config.reflection.enabled:
            log.info("reflection: off because no API key is set (TRADEPULSE_OPENAI_API_KEY)")
        if config.archiver.enabled:
            specs.append(
                ChildSpec(
                    "archiver",
                    functools.partial(run_archiver, config.archiver, database, archive),
                    shutdown_grace=0.0,
                    progress_deadline=deadline,
                )
            )

        try:
            async with trio.open_nursery() as nursery:
                for spec in specs:
                    await self.supervisor.start(nursery, spec)
                if config.feed.enabled:
                    await self._start_feed(nursery)
                nursery.start_soon(self._publish_status)
                log.info("service: running with actors %s", ", ".join(self.supervisor.actors))
                task_status.started()

                await self._stop_requested.wait()
                await self._shutdown()
                nursery.cancel_scope.cancel()
        finally:
            self.stopped.set()

    async def _start_feed(self, nursery: trio.Nursery) -> None:
        port_holder: list[int] = []

        async def feed(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as inner:
                port = await inner.start(
                    run_feed_server, self.config.feed, self.hub, self.intake, self.ingest_token
                )
                port_holder.append(port)
                task_status.started()

        await self.supervisor.start(
            nursery, ChildSpec("feed", feed, shutdown_grace=0.0)
        )
        self.port = port_holder[0]

    async def _publish_status(self) -> None:
        """Publish actor states on the feed when they change, at most twice a second."""
        published: dict[str, Any] | None = None
        while True:
            status = self.status()
            if status != published:
                self.hub.publish(status)
                published = status
            # Actor changes wake this at once; intake counts and queue
            # depths are refreshed once a second.
            with trio.move_on_after(_STATUS_REFRESH):
                await self.supervisor.changed.wait()
            await trio.sleep(_STATUS_INTERVAL)

    async def _shutdown(self) -> None:
        """Close the intake, drain queues upstream first, stop in reverse start order."""
        log.info("service: shutting down; intake closed, draining queues")
        self.intake.close()
        names = list(self.supervisor.actors)

        # Drain in start order, so that what the logger commits last still
        # reaches metrics before metrics is asked to drain.
        for name in names:
            spec = self.supervisor.actors[name].spec
            if spec.queue_depth is None or spec.shutdown_grace <= 0:
                continue
            with trio.move_on_after(spec.shutdown_grace) as grace:
                while spec.queue_depth():
                    await trio.sleep(_DRAIN_POLL)
            if grace.cancelled_caught:
                log.error(
                    "service: actor %s did not empty its queue within %.1f s; %d left",
                    name,
                    spec.shutdown_grace,
                    spec.queue_depth(),
                )
        if self.logger_inbox.depth:
            log.error(
                "service: %d accepted messages were not committed; the bot saw them "
                "unacknowledged and must send them again",
                self.logger_inbox.depth,
            )
        # Let ingest connections send the replies for the last commits, then
        # close with 1001, which a client that waits for replies can tell
        # from a crash.
        with trio.move_on_after(self.config.supervisor.shutdown_grace):
            while self.intake.pending_replies > 0 or self.intake.open_connections > 0:
                await trio.sleep(_DRAIN_POLL)

        for name in reversed(names):
            await self.supervisor.stop_gracefully(name)
        log.info("service: stopped")

    def stop(self) -> None:
        """Ask the service to shut down; ``run`` returns once it has."""
        self._stop_requested.set()
