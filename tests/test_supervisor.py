"""Supervision: restart after a failure, fatal start errors, stop."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from supervisor.config import SupervisorConfig
from supervisor.supervisor import (
    ActorStartError,
    ActorState,
    ChildSpec,
    RestartIntensityExceeded,
    RestartType,
    Strategy,
    Supervisor,
    busy,
)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Crashing:
    """An actor that fails ``failures`` times, each time after it became ready."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts = 0

    async def __call__(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        task_status.started()
        await trio.sleep(1)
        if self.starts <= self.failures:
            raise RuntimeError(f"boom {self.starts}")
        await trio.sleep_forever()


async def test_failed_actor_restarted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    restarts: list[tuple[str, str]] = []
    supervisor = Supervisor(SupervisorConfig(), on_restart=lambda a, e: restarts.append((a, e)))
    actor = Crashing(failures=3)
    caplog.set_level(logging.ERROR)
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, ChildSpec("metrics", actor))
        await trio.sleep(60)
        status = supervisor.actors["metrics"]
        assert status.state is ActorState.RUNNING
        nursery.cancel_scope.cancel()
    assert actor.starts == 4
    assert status.restarts == 3
    assert status.last_error == "RuntimeError: boom 3"
    assert restarts[0] == ("metrics", "RuntimeError: boom 1")
    assert "actor metrics failed" in caplog.text
    assert "boom 2" in caplog.text


async def test_backoff_doubles_and_caps(autojump_clock: trio.testing.MockClock) -> None:
    config = SupervisorConfig(restart_backoff=1.0, restart_backoff_max=4.0, max_restarts=100)
    start_times: list[float] = []

    async def failing(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        start_times.append(trio.current_time())
        task_status.started()
        raise RuntimeError("always")

    supervisor = Supervisor(config)
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, ChildSpec("flaky", failing))
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(start_times, start_times[1:])]
    # Jitter scales each delay by 0.5 to 1.0.
    assert 0.5 <= gaps[0] <= 1.0
    assert 1.0 <= gaps[1] <= 2.0
    assert all(gap <= 4.0 for gap in gaps)
    assert max(gaps) >= 2.0


async def test_failure_before_ready_is_fatal() -> None:
    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("port in use")

    supervisor = Supervisor(SupervisorConfig())
    async with trio.open_nursery() as nursery:
        with pytest.raises(ActorStartError) as caught:
            await supervisor.start(nursery, ChildSpec("feed", broken))
    assert caught.value.actor == "feed"
    assert "port in use" in str(caught.value)


async def test_stop_cancels_without_restart(autojump_clock: trio.testing.MockClock) -> None:
    actor = Crashing(failures=0)
    supervisor = Supervisor(SupervisorConfig())
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, ChildSpec("archiver", actor))
        supervisor.stop("archiver")
    assert supervisor.actors["archiver"].state is ActorState.STOPPED
    assert actor.starts == 1


def leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def test_intensity_exceeded_escalates(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = SupervisorConfig(max_restarts=3, period=60.0, restart_backoff=0.1)
    supervisor = Supervisor(config)
    with pytest.RaisesGroup(RestartIntensityExceeded, flatten_subgroups=True) as caught:
        async with trio.open_nursery() as nursery:
            await supervisor.start(nursery, ChildSpec("logger", Crashing(failures=100)))
    error = leaf(caught.value)
    assert isinstance(error, RestartIntensityExceeded)
    assert error.actor == "logger"
    assert "RuntimeError: boom" in str(error)
    assert "supervisor.max_restarts" in str(error)
    assert "escalating" in caplog.text


async def test_slow_failures_stay_within_intensity(autojump_clock: trio.testing.MockClock) -> None:
    config = SupervisorConfig(max_restarts=3, period=10.0)

    class Slow(Crashing):
        async def __call__(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            self.starts += 1
            task_status.started()
            await trio.sleep(20)
            raise RuntimeError("slow failure")

    actor = Slow(failures=0)
    supervisor = Supervisor(config)
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, ChildSpec("notifier", actor))
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert actor.starts >= 8


@pytest.mark.parametrize(
    ("restart", "fails", "expected_starts"),
    [
        (RestartType.PERMANENT, False, 2),
        (RestartType.TRANSIENT, False, 1),
        (RestartType.TRANSIENT, True, 2),
        (RestartType.TEMPORARY, True, 1),
    ],
)
async def test_restart_types(
    autojump_clock: trio.testing.MockClock, restart: RestartType, fails: bool, expected_starts: int
) -> None:
    starts = 0

    async def actor(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal starts
        starts += 1
        task_status.started()
        await trio.sleep(1)
        if starts == 1:
            if fails:
                raise RuntimeError("first run fails")
            return
        await trio.sleep_forever()

    supervisor = Supervisor(SupervisorConfig())
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, ChildSpec("reflection", actor, restart=restart))
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert starts == expected_starts


async def test_rest_for_one_restarts_later(autojump_clock: trio.testing.MockClock) -> None:
    first, second, third = Crashing(failures=0), Crashing(failures=0), Crashing(failures=0)
    supervisor = Supervisor(SupervisorConfig(), strategy=Strategy.REST_FOR_ONE)
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, ChildSpec("a", first))
        await supervisor.start(nursery, ChildSpec("b", second))
        await supervisor.start(nursery, ChildSpec("c", third))
        await trio.sleep(5)
        supervisor.kill("b", "chaos")
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert (first.starts, second.starts, third.starts) == (1, 2, 2)
    assert supervisor.actors["b"].last_error == "ActorKilled: chaos"
    assert supervisor.actors["c"].restarts == 0


async def test_one_for_one_leaves_others(autojump_clock: trio.testing.MockClock) -> None:
    first, second = Crashing(failures=0), Crashing(failures=0)
    supervisor = Supervisor(SupervisorConfig())
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, ChildSpec("a", first))
        await supervisor.start(nursery, ChildSpec("b", second))
        await trio.sleep(5)
        supervisor.kill("a")
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert (first.starts, second.starts) == (2, 1)


async def test_hung_actor_restarted(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def hanging(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal calls
        task_status.started()
        while True:
            with busy():
                calls += 1
                # The first call hangs, as an HTTP request with no timeout would.
                await trio.sleep(3600 if calls == 1 else 1)
            await trio.sleep(1)

    supervisor = Supervisor(SupervisorConfig())
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, ChildSpec("notifier", hanging, progress_deadline=10.0))
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    status = supervisor.actors["notifier"]
    assert status.restarts == 1
    assert status.last_error == "ActorHung: no progress for 10 s"
    assert calls > 5


async def test_idle_actor_not_hung(autojump_clock: trio.testing.MockClock) -> None:
    supervisor = Supervisor(SupervisorConfig())
    async with trio.open_nursery() as nursery:
        await supervisor.start(
            nursery, ChildSpec("archiver", Crashing(failures=0), progress_deadline=1.0)
        )
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert supervisor.actors["archiver"].restarts == 0


async def test_graceful_stop_drains_queue(autojump_clock: trio.testing.MockClock) -> None:
    queue = [1, 2, 3]

    async def consumer(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(1)
            if queue:
                queue.pop()

    supervisor = Supervisor(SupervisorConfig())
    async with trio.open_nursery() as nursery:
        spec = ChildSpec("metrics", consumer, shutdown_grace=10.0, queue_depth=lambda: len(queue))
        await supervisor.start(nursery, spec)
        await supervisor.stop_gracefully("metrics")
    assert queue == []
    assert supervisor.actors["metrics"].state is ActorState.STOPPED
