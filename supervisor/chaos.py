"""``tradepulse chaos``: a soak test that kills actors while bots send trades.

A service runs in this process on a temporary data folder. Producers send
trades over the real ``/ingest`` websocket and record each acknowledgement,
while a seeded killer makes random actors fail. At the end the database is
compared with what was acknowledged, and the tally is printed.
"""

from __future__ import annotations

import json
import random
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio
from trio_websocket import open_websocket

from actors.messages import dumps
from supervisor.config import Config, build_config
from supervisor.service import Service
from supervisor.supervisor import ActorState

# Trades per ingest request.
BATCH = 50

KILLABLE = ("logger", "metrics", "notifier", "archiver")


@dataclass
class Tally:
    seed: int
    seconds: float
    sent: int = 0
    acknowledged: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        kills = ", ".join(f"{name} {count}" for name, count in sorted(self.kills.items()))
        restarts = ", ".join(f"{name} {count}" for name, count in sorted(self.restarts.items()))
        verdict = "PASS" if self.lost == 0 and self.duplicated == 0 else "FAIL"
        return "\n".join(
            [
                f"chaos soak, seed {self.seed}, {self.seconds:g} s: {verdict}",
                f"  trades sent          {self.sent}",
                f"  acknowledged         {self.acknowledged}",
                f"  stored               {self.stored}",
                f"  lost (acked, absent) {self.lost}",
                f"  duplicated           {self.duplicated}",
                f"  kills                {kills or 'none'}",
                f"  restarts             {restarts or 'none'}",
            ]
        )


def _soak_config(data_dir: Path) -> Config:
    return build_config(
        {
            "service": {"data_dir": str(data_dir)},
            "feed": {"port": 0},
            "notifier": {"enabled": True},
            "archiver": {"retention_days": 0.0, "interval": 0.5, "chunk_size": 200},
            "supervisor": {
                "restart_backoff": 0.01,
                "restart_backoff_max": 0.2,
                # Kills are the point here; only a runaway loop should escalate.
                "max_restarts": 100_000,
            },
        },
        environ={},
    )


def _stored_ids(config: Config) -> tuple[set[str], int]:
    connection = sqlite3.connect(config.service.database_path)
    try:
        connection.execute("ATTACH DATABASE ? AS archive", (str(config.service.archive_path),))
        main = [row[0] for row in connection.execute("SELECT trade_id FROM main.trades")]
        archived = [row[0] for row in connection.execute("SELECT trade_id FROM archive.trades")]
    finally:
        connection.close()
    duplicated = len(set(main) & set(archived))
    return set(main) | set(archived), duplicated


async def _produce(
    service: Service, producer: int, stop: trio.Event, acknowledged: set[str], tally: Tally
) -> None:
    headers = [(b"Authorization", f"Bearer {service.ingest_token}".encode())]
    assert service.port is not None
    async with open_websocket("127.0.0.1", service.port, "/ingest", use_ssl=False, extra_headers=headers) as ws:
        number = 0
        while not stop.is_set():
            ids = [f"p{producer}-{number + i}" for i in range(BATCH)]
            number += BATCH
            batch = [
                {
                    "type": "trade_opened",
                    "trade_id": trade_id,
                    "venue": "soak",
                    "market": f"M{i % 7}",
                    "side": "long",
                    "size": "1",
                    "entry_price": "100",
                    "strategy": f"s{producer}",
                    "opened_at": "2026-01-01T00:00:00Z",
                }
                for i, trade_id in enumerate(ids)
            ]
            # Resolve half of them at once, so that the archiver has work.
            batch += [
                {"type": "trade_resolved", "trade_id": trade_id, "pnl": "1.5", "resolved_at": "2026-01-01T00:05:00Z"}
                for trade_id in ids[::2]
            ]
            await ws.send_message(dumps(batch))
            tally.sent += len(ids)
            reply = json.loads(await ws.get_message())
            if reply.get("status") == "accepted":
                acknowledged.update(ids)


async def _kill(service: Service, rng: random.Random, stop: trio.Event) -> None:
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.05, 0.5))
        name = rng.choice(KILLABLE)
        status = service.supervisor.actors.get(name)
        if status is not None and status.state is ActorState.RUNNING:
            service.supervisor.kill(name, "chaos soak")


async def soak(seconds: float, seed: int, producers: int) -> Tally:
    """Run the soak and return its tally."""
    rng = random.Random(seed)
    tally = Tally(seed, seconds)
    acknowledged: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="tradepulse-chaos-") as folder:
        config = _soak_config(Path(folder))
        service = Service(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            stop = trio.Event()
            async with trio.open_nursery() as workers:
                for producer in range(producers):
                    workers.start_soon(_produce, service, producer, stop, acknowledged, tally)
                workers.start_soon(_kill, service, rng, stop)
                await trio.sleep(seconds)
                stop.set()
            service.stop()
        stored, duplicated = _stored_ids(config)
    tally.acknowledged = len(acknowledged)
    tally.stored = len(stored)
    tally.lost = len(acknowledged - stored)
    tally.duplicated = duplicated
    tally.restarts = {name: status.restarts for name, status in service.supervisor.actors.items()}
    # Count the kills carried out: a request that the final stop overtook
    # made no actor fail.
    tally.kills = {
        name: status.kills for name, status in service.supervisor.actors.items() if status.kills
    }
    return tally
