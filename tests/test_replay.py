"""Replays of the real trade logs, watched over the websocket feed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket

from conftest import FREQTRADE_JSON, KALSHI_CSV, POLYMARKET_CSV, shared_file
from supervisor.config import build_config
from supervisor.replay import replay
from supervisor.report import build_report
from supervisor.service import Service

CLI = [sys.executable, "-m", "supervisor.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_cli(tmp_path: Path, *args: str, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRADEPULSE_DATA_DIR": str(tmp_path / "data"), "TRADEPULSE_FEED_PORT": str(port)}
    return subprocess.run(
        [*CLI, "--log-level", "WARNING", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_kalshi_replay_watched_on_feed(tmp_path: Path) -> None:
    log = shared_file(KALSHI_CSV)
    config = build_config(
        {
            "service": {"data_dir": str(tmp_path / "data")},
            "feed": {"port": 0},
            "metrics": {"publish_interval": 0.0},
            "notifier": {"enabled": False},
        },
        environ={},
    )
    service = Service(config)
    snapshots: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert service.port is not None
        config.feed.port = service.port
        config.service.ingest_token.__init__(service.ingest_token)  # type: ignore[misc]
        async with open_websocket("127.0.0.1", service.port, "/feed", use_ssl=False) as feed:

            async def watch() -> None:
                while not snapshots or snapshots[-1]["resolved"] < 338:
                    document = json.loads(await feed.get_message())
                    if document["type"] == "metrics":
                        snapshots.append(document)

            async with trio.open_nursery() as watchers:
                watchers.start_soon(watch)
                # A paced replay spreads the two weeks of the log over about a second.
                summary = await replay(config, log, None, None, 1_500_000.0, False)
                with trio.fail_after(10):
                    while not snapshots or snapshots[-1]["resolved"] < 338:
                        await trio.sleep(0.01)
        service.stop()

    assert summary.accepted == 676
    assert not summary.in_process
    final = snapshots[-1]
    assert (final["resolved"], final["wins"], final["losses"]) == (338, 320, 18)
    assert final["realized_pnl"] == -51.14
    # The client saw the figures move, not only the first and last snapshot.
    assert len({s["resolved"] for s in snapshots}) > 3
    report = build_report(config)
    assert (report["wins"], report["losses"], report["realized_pnl"]) == (320, 18, -51.14)


def test_cli_replay_kalshi_in_process(tmp_path: Path) -> None:
    log = shared_file(KALSHI_CSV)
    port = free_port()
    replayed = run_cli(tmp_path, "replay", str(log), "--no-progress", port=port)
    assert replayed.returncode == 0, replayed.stderr
    assert "676 of 676 messages accepted" in replayed.stdout
    reported = run_cli(tmp_path, "report", "--json", port=port)
    document = json.loads(reported.stdout)
    assert document["resolved"] == 338
    assert (document["wins"], document["losses"]) == (320, 18)
    assert document["realized_pnl"] == -51.14
    # Replaying the same file again stores nothing twice.
    run_cli(tmp_path, "replay", str(log), "--no-progress", port=port)
    again = json.loads(run_cli(tmp_path, "report", "--json", port=port).stdout)
    assert again["resolved"] == 338


def test_cli_replay_freqtrade(tmp_path: Path) -> None:
    log = shared_file(FREQTRADE_JSON)
    replayed = run_cli(tmp_path, "replay", str(log), "--no-progress", port=free_port())
    assert replayed.returncode == 0, replayed.stderr
    document = json.loads(run_cli(tmp_path, "report", "--json", port=free_port()).stdout)
    assert (document["wins"], document["losses"], document["draws"]) == (1051, 357, 6)
    assert round(document["realized_pnl"], 2) == 11081.84


def test_cli_replay_polymarket_keeps_open(tmp_path: Path) -> None:
    log = shared_file(POLYMARKET_CSV)
    replayed = run_cli(tmp_path, "replay", str(log), "--no-progress", port=free_port())
    assert replayed.returncode == 0, replayed.stderr
    document = json.loads(run_cli(tmp_path, "report", "--json", port=free_port()).stdout)
    assert document["open"] > 0
    assert document["open_exposure"] > 0
    # Every position counted as open is neither a win nor a loss.
    assert document["wins"] + document["losses"] + document["draws"] == document["resolved"]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    port = free_port()
    missing = run_cli(tmp_path, "replay", str(tmp_path / "nope.csv"), port=port)
    assert missing.returncode != 0
    assert "nope.csv" in missing.stderr
    assert "Traceback" not in missing.stderr

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("a,b,c\n1,2,3\n")
    failed = run_cli(tmp_path, "replay", str(unknown), port=port)
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr

    no_database = run_cli(tmp_path, "report", port=port)
    assert "no database" in no_database.stderr

    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[feed]\nprot = 1\n")
    config_error = run_cli(tmp_path, "--config", str(bad_config), "report", port=port)
    assert config_error.returncode == 2
    assert "feed.prot" in config_error.stderr


def test_cli_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        # Something listens but is no tradepulse: replay says so; run names the port.
        env = {**os.environ, "TRADEPULSE_DATA_DIR": str(tmp_path / "data"), "TRADEPULSE_FEED_PORT": str(port)}
        process = subprocess.run(
            [*CLI, "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
    assert process.returncode == 1
    assert f"port {port}" in process.stderr
    assert "in use" in process.stderr


def test_cli_run_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TRADEPULSE_DATA_DIR": str(tmp_path / "data"), "TRADEPULSE_FEED_PORT": str(port)}
    process = subprocess.Popen(
        [*CLI, "run"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "SIGTERM received" in stderr
    assert "service: stopped" in stderr
