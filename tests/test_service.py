"""The whole service over real websockets and a real SQLite file."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket

from actors.messages import message_to_dict
from helpers import opened, resolved
from supervisor.config import Config, build_config
from actors.notifier import Notification
from supervisor.service import Service


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "service": {"data_dir": str(tmp_path / "data")},
        "feed": {"port": 0},
        "metrics": {"publish_interval": 0.01},
        "archiver": {"interval": 3600.0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return build_config(data, environ={})


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Service]:
    service = Service(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        try:
            yield service
        finally:
            service.stop()


def stored(config: Config, query: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(config.service.database_path)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def auth(service: Service) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {service.ingest_token}".encode())]


def ingest(service: Service) -> Any:
    """Open a websocket to the service's /ingest with its bearer token."""
    return open_websocket("127.0.0.1", service.port, "/ingest", use_ssl=False, extra_headers=auth(service))


async def test_ingest_acknowledges_after_commit(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        async with ingest(service) as ws:
            await ws.send_message(json.dumps({**message_to_dict(opened("t1")), "ref": 7}))
            reply = json.loads(await ws.get_message())
            assert reply == {"status": "accepted", "ref": 7, "key": "t1"}
            assert stored(config, "SELECT trade_id FROM trades") == [("t1",)]


async def test_ingest_rejects_bad_field(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        async with ingest(service) as ws:
            bad = {**message_to_dict(opened("t1")), "size": -5}
            await ws.send_message(json.dumps([message_to_dict(opened("t0")), bad]))
            reply = json.loads(await ws.get_message())
            await ws.send_message("{not json")
            garbage = json.loads(await ws.get_message())
    assert reply["status"] == "partial"
    assert reply["accepted"] == 1
    assert reply["rejected"][0]["field"] == "size"
    assert reply["rejected"][0]["value"] == -5
    assert reply["rejected"][0]["index"] == 1
    assert garbage["status"] == "rejected"
    assert "not valid JSON" in garbage["error"]
    # The valid message of the same request is stored; the bad one is not.
    assert stored(config, "SELECT trade_id FROM trades") == [("t0",)]


async def test_ingest_requires_token(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        for headers in ([], [(b"Authorization", b"Bearer wrong")]):
            with pytest.raises(ConnectionRejected) as caught:
                async with open_websocket(
                    "127.0.0.1", service.port, "/ingest", use_ssl=False, extra_headers=headers
                ):
                    pass
            assert caught.value.status_code == 401


async def test_token_file_is_private(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        token_path = config.service.token_path
        assert token_path.read_text().strip() == service.ingest_token
        assert token_path.stat().st_mode & 0o077 == 0


async def test_feed_sends_snapshot_then_updates(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        async with open_websocket("127.0.0.1", service.port, "/feed", use_ssl=False) as feed:
            first = json.loads(await feed.get_message())
            assert first["type"] == "metrics"
            assert first["resolved"] == 0
            for message in (opened("t1"), resolved("t1", "0.37")):
                envelope = await service.intake.submit(message)
                await envelope.committed.wait()
            with trio.fail_after(5):
                while True:
                    update = json.loads(await feed.get_message())
                    if update["type"] == "metrics" and update["resolved"] == 1:
                        break
    assert update["wins"] == 1
    assert update["realized_pnl"] == 0.37
    assert "token" not in json.dumps(update).lower()


async def test_shutdown_keeps_accepted_trades(tmp_path: Path) -> None:
    config = make_config(tmp_path, logger={"batch_max": 50})
    service = Service(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for index in range(2000):
            await service.intake.submit(opened(f"t{index}"))
        # Stop at once: the logger still has most of them queued.
        service.stop()
    assert stored(config, "SELECT COUNT(*) FROM trades") == [(2000,)]


async def test_intake_closed_after_stop(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        headers = auth(service)
        async with open_websocket(
            "127.0.0.1", service.port, "/ingest", use_ssl=False, extra_headers=headers
        ) as ws:
            await ws.send_message(json.dumps(message_to_dict(opened("early"))))
            while service.intake.accepted < 1:
                await trio.sleep(0.001)
            service.intake.close()
            reply = json.loads(await ws.get_message())
            # Every reply owed is sent, then the service closes the connection.
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket(
                "127.0.0.1", service.port, "/ingest", use_ssl=False, extra_headers=headers
            ):
                pass
    assert reply["status"] == "accepted"
    assert closed.value.reason.code == 1001
    assert rejected.value.status_code == 503


async def test_crashed_metrics_restarted_exact(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    service = Service(config)
    failures = {"left": 2}
    publish = service.hub.publish

    def flaky_publish(document: dict[str, Any]) -> None:
        if document.get("resolved") and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("metrics crashed on purpose")
        publish(document)

    service.hub.publish = flaky_publish  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for index in range(20):
            await service.intake.submit(opened(f"t{index}"))
            envelope = await service.intake.submit(resolved(f"t{index}", "1.5"))
        await envelope.committed.wait()
        with trio.fail_after(10):
            while (service.hub.latest_metrics or {}).get("resolved") != 20:
                await trio.sleep(0.01)
        service.stop()
    assert service.supervisor.actors["metrics"].restarts == 2
    assert service.hub.latest_metrics is not None
    assert service.hub.latest_metrics["realized_pnl"] == 30.0
    assert service.hub.latest_metrics["wins"] == 20


async def test_unknown_path_rejected(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket("127.0.0.1", service.port, "/admin", use_ssl=False):
                pass
    assert caught.value.status_code == 404


async def test_deep_nesting_keeps_server_up(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        async with open_websocket("127.0.0.1", service.port, "/feed", use_ssl=False) as feed:
            await feed.get_message()
            async with ingest(service) as ws:
                await ws.send_message("[" * 100_000 + "]" * 100_000)
                reply = json.loads(await ws.get_message())
                await ws.send_message(json.dumps(message_to_dict(opened("after"))))
                after = json.loads(await ws.get_message())
            # The feed client of another connection was not dropped.
            await service.intake.submit(opened("watched"))
            with trio.fail_after(5):
                await feed.get_message()
    assert reply["status"] == "rejected"
    assert "nesting too deep" in reply["error"]
    assert after["status"] == "accepted"
    assert service.supervisor.actors["feed"].restarts == 0


async def test_oversized_array_rejected(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        async with ingest(service) as ws:
            await ws.send_message("[" + ",".join(["{}"] * 10_001) + "]")
            too_many = json.loads(await ws.get_message())
            await ws.send_message("[" + ",".join(["{}"] * 500) + "]")
            all_bad = json.loads(await ws.get_message())
    assert too_many["status"] == "rejected"
    assert "at most 10000" in too_many["error"]
    assert all_bad["rejected_count"] == 500
    assert len(all_bad["rejected"]) == 100


async def test_mark_to_market_reaches_feed(tmp_path: Path) -> None:
    from actors.messages import parse_message

    config = make_config(tmp_path)
    async with running(config) as service:
        await service.intake.submit(opened("t1", fees="0"))
        mark = parse_message(
            {"type": "trade_marked", "trade_id": "t1", "price": "0.90", "marked_at": "2026-07-01T12:05:00Z"}
        )
        envelope = await service.intake.submit(mark)
        await envelope.committed.wait()
        with trio.fail_after(5):
            while ((service.hub.latest_metrics or {}).get("equity") or {}).get("unrealized_pnl") != -0.6:
                await trio.sleep(0.01)
    assert service.hub.latest_metrics is not None
    assert service.hub.latest_metrics["open"] == 1


async def test_hung_telegram_restarts_notifier(tmp_path: Path) -> None:
    async def never_answer(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as servers:
        listeners = await servers.start(
            functools.partial(trio.serve_tcp, never_answer, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        config = make_config(
            tmp_path,
            notifier={"api_base": f"http://127.0.0.1:{port}", "chat_id": "42", "timeout": 30.0},
            supervisor={"progress_deadline": 0.3, "restart_backoff": 0.01},
        )
        config.notifier.bot_token.__init__("123:secret-token")  # type: ignore[misc]
        async with running(config) as service:
            service.notifications.offer(Notification("info", "hello"))
            status = service.supervisor.actors["notifier"]
            with trio.fail_after(10):
                while status.restarts < 1:
                    await trio.sleep(0.01)
        servers.cancel_scope.cancel()
    assert status.last_error == "ActorHung: no progress for 0.3 s"


async def test_idle_ingest_closed_1001_at_stop(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as service:
        async with ingest(service) as ws:
            await ws.send_message(json.dumps(message_to_dict(opened("idle"))))
            reply = json.loads(await ws.get_message())
            # The connection owes nothing when the service stops.
            service.stop()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    assert reply["status"] == "accepted"
    assert closed.value.reason.code == 1001
