"""Supervision of actors: start in order, restart on failure, stop in reverse.

Each actor is an async function that calls ``task_status.started()`` once it
is ready, then runs until cancelled. The supervisor runs it in its own task
and cancel scope:

- An actor that raises before it signalled ready fails the whole start,
  because a bad database path or a port in use will not fix itself.
- An actor that raises later is restarted after a backoff that doubles on
  each consecutive failure, with jitter, up to ``restart_backoff_max``. The
  backoff resets once the actor has run for ``STABLE_AFTER`` seconds.
- Queues are owned by the caller, not the actor, so a restart loses nothing
  that was queued.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from supervisor.config import SupervisorConfig

log = logging.getLogger(__name__)

# An actor that ran this long before failing starts again with the shortest
# backoff (seconds).
STABLE_AFTER = 30.0


class ActorState(enum.Enum):
    # Started; has not yet signalled that it is ready.
    STARTING = "starting"
    # Ready and doing its work.
    RUNNING = "running"
    # Failed; waiting out its backoff before the next start.
    BACKING_OFF = "backing_off"
    # Asked to stop; its cancel scope is cancelled.
    STOPPING = "stopping"
    # Returned or stopped; will not run again.
    STOPPED = "stopped"


class ActorStartError(Exception):
    """An actor failed before it signalled that it was ready."""

    def __init__(self, actor: str, error: BaseException) -> None:
        self.actor = actor
        self.error = error
        super().__init__(f"actor {actor!r} failed to start: {describe(error)}")


ActorFunction = Callable[..., Awaitable[Any]]


@dataclass
class ActorStatus:
    """What the supervisor knows of one actor, for logs, the feed and ``status``."""

    name: str
    state: ActorState = ActorState.STARTING
    restarts: int = 0
    last_error: str | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


def describe(error: BaseException) -> str:
    """Return "Type: message" for an error, unwrapping single-error groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Supervisor:
    """Runs actors in a nursery that the caller owns."""

    def __init__(
        self,
        config: SupervisorConfig,
        on_restart: Callable[[str, str], None] | None = None,
    ) -> None:
        self._config = config
        self._on_restart = on_restart
        self.actors: dict[str, ActorStatus] = {}

    async def start(self, nursery: trio.Nursery, name: str, actor: ActorFunction) -> None:
        """Start ``actor`` under supervision and wait until it is ready.

        Raises ``ActorStartError`` if it fails before signalling ready.
        """
        if name in self.actors:
            raise ValueError(f"an actor named {name!r} is already supervised")
        status = self.actors[name] = ActorStatus(name)
        await nursery.start(self._supervise, status, actor)

    def stop(self, name: str) -> None:
        """Cancel one actor; it will not be restarted."""
        status = self.actors[name]
        if status.state is not ActorState.STOPPED:
            status.state = ActorState.STOPPING
            status.scope.cancel()

    async def _supervise(
        self,
        status: ActorStatus,
        actor: ActorFunction,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        backoff = self._config.restart_backoff
        ready = False
        with status.scope:
            while True:
                status.state = ActorState.STARTING
                started_at = trio.current_time()
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(actor)
                        status.state = ActorState.RUNNING
                        if not ready:
                            ready = True
                            task_status.started()
                except Exception as error:
                    if not ready:
                        raise ActorStartError(status.name, error) from error
                    backoff = self._after_failure(status, error, started_at, backoff)
                    status.state = ActorState.BACKING_OFF
                    # Jitter spreads the restarts of actors that failed together.
                    await trio.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, self._config.restart_backoff_max)
                    continue
                log.info("supervisor: actor %s returned; it will not be restarted", status.name)
                if not ready:
                    task_status.started()
                break
        status.state = ActorState.STOPPED

    def _after_failure(
        self, status: ActorStatus, error: Exception, started_at: float, backoff: float
    ) -> float:
        if trio.current_time() - started_at >= STABLE_AFTER:
            backoff = self._config.restart_backoff
        status.restarts += 1
        status.last_error = describe(error)
        log.error(
            "supervisor: actor %s failed (restart %d in about %.2f s): %s",
            status.name,
            status.restarts,
            backoff,
            status.last_error,
            exc_info=error,
        )
        if self._on_restart is not None:
            self._on_restart(status.name, status.last_error)
        return backoff
