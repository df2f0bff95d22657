"""Supervision of actors, after Erlang/OTP: child specs, restarts, intensity.

Each actor is an async function that calls ``task_status.started()`` once it
is ready, then runs until cancelled. The supervisor runs each incarnation in
its own nursery, beside a monitor task that enforces the progress deadline
and carries out ``kill`` requests.

- An actor that raises before it signalled ready fails the whole start,
  because a bad database path or a port in use will not fix itself.
- A permanent actor is restarted whenever it ends; a transient one only when
  it fails; a temporary one never.
- Restarts back off exponentially with jitter, up to ``restart_backoff_max``;
  the backoff resets once the actor has run for ``stable_after`` seconds.
- More than ``max_restarts`` restarts within ``period`` seconds, counted over
  all actors, stop the supervisor with ``RestartIntensityExceeded``.
- With the rest-for-one strategy, a failed actor also restarts every actor
  started after it, because those depend on it.
- Queues are owned by the caller, not the actor, so a restart loses nothing
  that was queued.
"""

from __future__ import annotations

import collections
import contextvars
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from supervisor.config import SupervisorConfig

log = logging.getLogger(__name__)

# Errors kept per actor for the escalation message and ``tradepulse status``.
LAST_ERRORS_KEPT = 5


class ActorState(enum.Enum):
    # Started; has not yet signalled that it is ready.
    STARTING = "starting"
    # Ready and doing its work.
    RUNNING = "running"
    # Failed; waiting out its backoff before the next start.
    BACKING_OFF = "backing_off"
    # Asked to stop: draining its queue, then cancelled.
    STOPPING = "stopping"
    # Ended and will not run again.
    STOPPED = "stopped"


class RestartType(enum.Enum):
    # Restarted whenever it ends, by failure or by returning.
    PERMANENT = "permanent"
    # Restarted only when it fails.
    TRANSIENT = "transient"
    # Never restarted.
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    # A failure restarts only the failed actor.
    ONE_FOR_ONE = "one_for_one"
    # A failure restarts the failed actor and every actor started after it.
    REST_FOR_ONE = "rest_for_one"


class ActorStartError(Exception):
    """An actor failed before it signalled that it was ready."""

    def __init__(self, actor: str, error: BaseException) -> None:
        self.actor = actor
        self.error = error
        super().__init__(f"actor {actor!r} failed to start: {describe(error)}")


class RestartIntensityExceeded(Exception):
    """Actors failed more often than the restart intensity allows."""

    def __init__(self, actor: str, restarts: int, period: float, errors: list[str]) -> None:
        self.actor = actor
        self.errors = errors
        listed = "; ".join(errors)
        super().__init__(
            f"actor {actor!r} failed and the supervisor gave up: {restarts} restarts within "
            f"{period:g} s exceed supervisor.max_restarts; last errors of {actor}: {listed}"
        )


class ActorKilled(Exception):
    """Raised inside an actor that ``Supervisor.kill`` stopped on purpose."""


class ActorHung(Exception):
    """Raised inside an actor that made no progress within its deadline."""


ActorFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class ChildSpec:
    """How to run one actor and what to do when it ends."""

    name: str
    run: ActorFunction
    restart: RestartType = RestartType.PERMANENT
    # Time the actor gets at shutdown to empty its queue before it is cancelled (seconds).
    shutdown_grace: float = 5.0
    # Time a unit of work may take before the actor counts as hung (seconds).
    progress_deadline: float | None = None
    # Messages waiting for the actor, for status and for draining at shutdown.
    queue_depth: Callable[[], int] | None = None


class Health:
    """Progress reports of one actor incarnation.

    An actor wraps each unit of work in ``with busy():``. Waiting for input is
    not busy, so an idle actor never counts as hung.
    """

    def __init__(self) -> None:
        self.busy_since: float | None = None
        self.progress = 0
        self.changed = trio.Event()

    @contextmanager
    def work(self) -> Iterator[None]:
        self.busy_since = trio.current_time()
        self.changed.set()
        try:
            yield
        finally:
            self.busy_since = None
            self.progress += 1


_current_health: contextvars.ContextVar[Health | None] = contextvars.ContextVar(
    "tradepulse_actor_health", default=None
)


@contextmanager
def busy() -> Iterator[None]:
    """Mark a unit of work of the calling actor; the progress deadline applies to it."""
    health = _current_health.get()
    if health is None:
        yield
        return
    with health.work():
        yield


@dataclass
class ActorStatus:
    """The supervisor's record of one actor, for logs, the feed and ``status``."""

    spec: ChildSpec
    state: ActorState = ActorState.STARTING
    restarts: int = 0
    # Kill requests carried out; a request for an incarnation that failed on
    # its own first is moot.
    kills: int = 0
    last_errors: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LAST_ERRORS_KEPT)
    )
    backoff_until: float | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope, repr=False)
    ended: trio.Event = field(default_factory=trio.Event, repr=False)
    # Per incarnation: a kill request and the health record.
    kill_reason: str | None = None
    kill_requested: trio.Event = field(default_factory=trio.Event, repr=False)
    bounce_requested: trio.Event = field(default_factory=trio.Event, repr=False)
    health: Health = field(default_factory=Health, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def last_error(self) -> str | None:
        return self.last_errors[-1] if self.last_errors else None

    def to_dict(self) -> dict[str, Any]:
        depth = self.spec.queue_depth() if self.spec.queue_depth is not None else None
        return {
            "name": self.name,
            "state": self.state.value,
            "restarts": self.restarts,
            "queue_depth": depth,
            "last_error": self.last_error,
            "progress": self.health.progress,
        }


def describe(error: BaseException) -> str:
    """Return "Type: message" for an error; a group lists its errors."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BaseExceptionGroup):
        return " + ".join(describe(inner) for inner in error.exceptions)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Bounced(Exception):
    """An incarnation stopped because an actor it depends on restarted."""


class Supervisor:
    """Runs actors in a nursery that the caller owns."""

    def __init__(
        self,
        config: SupervisorConfig,
        on_restart: Callable[[str, str], None] | None = None,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
    ) -> None:
        self._config = config
        self._on_restart = on_restart
        self.strategy = strategy
        self.actors: dict[str, ActorStatus] = {}
        self._restart_times: collections.deque[float] = collections.deque()
        self.changed = trio.Event()

    def _touch(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def status(self) -> list[dict[str, Any]]:
        return [status.to_dict() for status in self.actors.values()]

    async def start(self, nursery: trio.Nursery, spec: ChildSpec) -> None:
        """Start ``spec`` under supervision and wait until it is ready.

        Raises ``ActorStartError`` if it fails before signalling ready, and
        ``RestartIntensityExceeded`` later, out of the nursery, if the actors
        fail too often.
        """
        if spec.name in self.actors:
            raise ValueError(f"an actor named {spec.name!r} is already supervised")
        status = self.actors[spec.name] = ActorStatus(spec)
        await nursery.start(self._supervise, status)

    def kill(self, name: str, reason: str = "killed on request") -> None:
        """Make one actor fail now, as if it had raised; it is restarted as usual."""
        status = self.actors[name]
        if status.state is ActorState.RUNNING or status.state is ActorState.STARTING:
            status.kill_reason = reason
            status.kill_requested.set()

    def restart(self, name: str) -> None:
        """Restart one actor at once; this is not a failure and has no backoff."""
        status = self.actors[name]
        if status.state is ActorState.RUNNING or status.state is ActorState.STARTING:
            status.bounce_requested.set()

    def stop(self, name: str) -> None:
        """Cancel one actor; it will not be restarted."""
        status = self.actors[name]
        if status.state is not ActorState.STOPPED:
            status.state = ActorState.STOPPING
            status.scope.cancel()
            self._touch()

    async def stop_gracefully(self, name: str) -> None:
        """Let the actor empty its queue for up to its grace period, then cancel it."""
        status = self.actors[name]
        if status.state is ActorState.STOPPED:
            return
        status.state = ActorState.STOPPING
        self._touch()
        depth = status.spec.queue_depth
        if depth is not None:
            with trio.move_on_after(status.spec.shutdown_grace) as grace:
                while depth():
                    await trio.sleep(0.01)
            if grace.cancelled_caught:
                log.warning(
                    "supervisor: actor %s still had %d queued after its %.1f s grace period",
                    name,
                    depth(),
                    status.spec.shutdown_grace,
                )
        status.scope.cancel()
        await status.ended.wait()

    # -- supervision loop -----------------------------------------------------

    async def _supervise(
        self, status: ActorStatus, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        backoff = self._config.restart_backoff
        ready = False
        try:
            with status.scope:
                while True:
                    started_at = trio.current_time()
                    failure = await self._run_once(status, ready, task_status)
                    if not ready:
                        ready = True
                    if failure is None:
                        if status.spec.restart is not RestartType.PERMANENT:
                            log.info("supervisor: actor %s returned; not restarted", status.name)
                            break
                        log.warning("supervisor: actor %s returned; restarting it", status.name)
                    elif isinstance(failure, _Bounced):
                        continue
                    elif status.spec.restart is RestartType.TEMPORARY:
                        self._record_failure(status, failure, escalate=False)
                        break
                    else:
                        if trio.current_time() - started_at >= self._config.stable_after:
                            backoff = self._config.restart_backoff
                        self._record_failure(status, failure, escalate=True)
                        self._bounce_dependents(status)
                    # Jitter spreads the restarts of actors that failed together.
                    delay = backoff * random.uniform(0.5, 1.0)
                    status.state = ActorState.BACKING_OFF
                    status.backoff_until = trio.current_time() + delay
                    self._touch()
                    await trio.sleep(delay)
                    status.backoff_until = None
                    backoff = min(backoff * 2, self._config.restart_backoff_max)
        finally:
            status.state = ActorState.STOPPED
            status.ended.set()
            self._touch()

    async def _run_once(
        self, status: ActorStatus, ready: bool, task_status: trio.TaskStatus[None]
    ) -> Exception | None:
        """Run one incarnation; return its failure, or None if it returned."""
        status.state = ActorState.STARTING
        status.kill_requested = trio.Event()
        status.bounce_requested = trio.Event()
        status.kill_reason = None
        status.health = Health()
        self._touch()
        returned = trio.Event()

        async def incarnation(*, task_status: trio.TaskStatus[None]) -> None:
            await status.spec.run(task_status=task_status)
            returned.set()

        token = _current_health.set(status.health)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._monitor, status)
                await nursery.start(incarnation)
                status.state = ActorState.RUNNING
                self._touch()
                if not ready:
                    task_status.started()
                    ready = True
                await returned.wait()
                # The actor returned: stop its monitor too.
                nursery.cancel_scope.cancel()
        except Exception as error:
            if not ready:
                raise ActorStartError(status.name, error) from error
            return _unwrap(error)
        except BaseExceptionGroup as group:
            # A stop that races with a kill, a restart request or a missed
            # deadline leaves that error beside the cancellation. The stop
            # wins: drop the error and let the cancellation end the actor.
            if status.state is not ActorState.STOPPING:
                raise
            dropped, rest = group.split((ActorKilled, ActorHung, _Bounced))
            if dropped is not None and dropped.subgroup(ActorKilled) is not None:
                # The kill made no actor fail, so it does not count as carried out.
                status.kills -= 1
            if rest is not None:
                raise rest from None
            return None
        finally:
            _current_health.reset(token)
        if not ready:
            task_status.started()
        return None

    async def _monitor(self, status: ActorStatus) -> None:
        """Raise inside the incarnation on a kill request, a bounce or a missed deadline."""
        async with trio.open_nursery() as nursery:

            async def on_kill() -> None:
                await status.kill_requested.wait()
                if status.state is ActorState.STOPPING:
                    # A stop overtook the kill; failing now would turn a clean
                    # stop into an error.
                    return
                status.kills += 1
                raise ActorKilled(status.kill_reason or "killed on request")

            async def on_bounce() -> None:
                await status.bounce_requested.wait()
                if status.state is ActorState.STOPPING:
                    return
                raise _Bounced("an actor started before it restarted")

            nursery.start_soon(on_kill)
            nursery.start_soon(on_bounce)
            deadline = status.spec.progress_deadline
            if deadline is not None:
                nursery.start_soon(_watch_progress, status.health, deadline)

    def _record_failure(self, status: ActorStatus, error: Exception, *, escalate: bool) -> None:
        status.restarts += 1
        status.last_errors.append(describe(error))
        self._touch()
        now = trio.current_time()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] < now - self._config.period:
            self._restart_times.popleft()
        log.error(
            "supervisor: actor %s failed (failure %d): %s",
            status.name,
            status.restarts,
            status.last_error,
            exc_info=error if not isinstance(error, ActorKilled | ActorHung) else None,
        )
        if escalate and len(self._restart_times) > self._config.max_restarts:
            escalation = RestartIntensityExceeded(
                status.name, len(self._restart_times), self._config.period, list(status.last_errors)
            )
            log.critical("supervisor: escalating: %s", escalation)
            raise escalation
        if self._on_restart is not None:
            self._on_restart(status.name, status.last_error or "")

    def _bounce_dependents(self, failed: ActorStatus) -> None:
        if self.strategy is not Strategy.REST_FOR_ONE:
            return
        names = list(self.actors)
        for name in names[names.index(failed.name) + 1 :]:
            dependent = self.actors[name]
            if dependent.state in (ActorState.RUNNING, ActorState.STARTING):
                log.info("supervisor: restarting %s because %s failed", name, failed.name)
                dependent.bounce_requested.set()


async def _watch_progress(health: Health, deadline: float) -> None:
    while True:
        if health.busy_since is None:
            await health.changed.wait()
            health.changed = trio.Event()
            continue
        started = health.busy_since
        progress = health.progress
        await trio.sleep_until(started + deadline)
        if health.busy_since == started and health.progress == progress:
            raise ActorHung(f"no progress for {deadline:g} s")


def _unwrap(error: Exception) -> Exception:
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]  # type: ignore[assignment]
    return error
