"""Supervision: restart after a failure, fatal start errors, stop."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from supervisor.config import SupervisorConfig
from supervisor.supervisor import ActorStartError, ActorState, Supervisor


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
        await supervisor.start(nursery, "metrics", actor)
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
    config = SupervisorConfig(restart_backoff=1.0, restart_backoff_max=4.0)
    start_times: list[float] = []

    async def failing(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        start_times.append(trio.current_time())
        task_status.started()
        raise RuntimeError("always")

    supervisor = Supervisor(config)
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, "flaky", failing)
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
            await supervisor.start(nursery, "feed", broken)
    assert caught.value.actor == "feed"
    assert "port in use" in str(caught.value)


async def test_stop_cancels_without_restart(autojump_clock: trio.testing.MockClock) -> None:
    actor = Crashing(failures=0)
    supervisor = Supervisor(SupervisorConfig())
    async with trio.open_nursery() as nursery:
        await supervisor.start(nursery, "archiver", actor)
        supervisor.stop("archiver")
    assert supervisor.actors["archiver"].state is ActorState.STOPPED
    assert actor.starts == 1
