"""A real ``tradepulse run`` process killed with SIGKILL keeps every acknowledged trade."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, open_websocket

from actors.messages import message_to_dict
from helpers import opened
from supervisor.chaos import soak

CLI = [sys.executable, "-m", "supervisor.cli", "--log-level", "WARNING", "run"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_service(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TRADEPULSE_DATA_DIR": str(tmp_path / "data"), "TRADEPULSE_FEED_PORT": str(port)}
    process = subprocess.Popen(CLI, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("the service did not start listening within 30 s")


async def stream_until_killed(port: int, token: str, process: subprocess.Popen[bytes]) -> tuple[set[str], int]:
    """Send trades in small batches; kill the process after some acknowledgements."""
    acknowledged: set[str] = set()
    sent = 0
    in_flight: list[list[str]] = []
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    try:
        async with open_websocket("127.0.0.1", port, "/ingest", use_ssl=False, extra_headers=headers) as ws:

            async def receive() -> None:
                while True:
                    reply = json.loads(await ws.get_message())
                    batch = in_flight.pop(0)
                    assert reply["status"] == "accepted", reply
                    acknowledged.update(batch)
                    if len(acknowledged) >= 3000 and process.poll() is None:
                        process.send_signal(signal.SIGKILL)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                for batch_number in range(1000):
                    batch = [f"k{batch_number}-{i}" for i in range(20)]
                    in_flight.append(batch)
                    await ws.send_message(json.dumps([message_to_dict(opened(t)) for t in batch]))
                    sent += len(batch)
                    await trio.sleep(0)
    except* (ConnectionClosed, OSError):
        pass
    return acknowledged, sent


def test_sigkill_keeps_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    process = start_service(tmp_path, port)
    try:
        token = (tmp_path / "data" / "ingest.token").read_text().strip()
        acknowledged, sent = trio.run(stream_until_killed, port, token, process)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 3000
    # The kill came before the stream ended, so some trades were never acknowledged.
    assert len(acknowledged) < sent

    restarted = start_service(tmp_path, port)
    try:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=30)
    finally:
        restarted.kill()
    connection = sqlite3.connect(tmp_path / "data" / "tradepulse.sqlite")
    try:
        stored = {row[0] for row in connection.execute("SELECT trade_id FROM trades")}
    finally:
        connection.close()
    assert acknowledged - stored == set()
    assert stored <= {f"k{b}-{i}" for b in range(1000) for i in range(20)}


async def test_chaos_soak_tally() -> None:
    tally = await soak(1.0, seed=3, producers=2)
    assert tally.acknowledged > 0
    assert tally.lost == 0
    assert tally.duplicated == 0
    assert tally.stored >= tally.acknowledged
    assert sum(tally.kills.values()) > 0
    for name, kills in tally.kills.items():
        assert tally.restarts[name] == kills, name
    assert "PASS" in tally.describe()
