"""``tradepulse report --trades N``: per-trade values from a real SQLite database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import BASE_TIME, cancelled, opened, resolved

from actors.archiver import archive_once
from actors.logger import write_batch
from actors.messages import Message, parse_message
from actors.store import TRADE_UPSERT, _latest_select, open_database, prepare_archive_sync
from actors.trades import TradeRecord, record_to_row
from supervisor.config import Config, build_config
from supervisor.report import build_report, format_report

CLI = [sys.executable, "-m", "supervisor.cli"]
LINEAR = {"venue": "binance", "market_kind": "linear", "strategy": "meanrev"}


def linear(trade_id: str, side: str, size: str, price: str, fees: str, minute: int) -> Message:
    market = "BTC/USDT:USDT" if side == "long" else "ETH/USDT:USDT"
    fields = {"side": side, "size": size, "entry_price": price, "fees": fees, "market": market}
    return opened(trade_id, minute=minute, **fields, **LINEAR)


def config_for(tmp_path: Path, **metrics: Any) -> Config:
    return build_config(
        {"service": {"data_dir": str(tmp_path)}, "metrics": {"starting_balance": 1000, **metrics}},
        environ={},
    )


async def store(config: Config, *messages: Message, records: tuple[TradeRecord, ...] = ()) -> None:
    connection = await open_database(config.service.database_path, config.service.archive_path)
    try:
        if messages:
            await write_batch(connection, list(messages))
        # Rows that ingest would reject (a zero entry price) go in through
        # the store's upsert, as an older version or another tool may have written them.
        for record in records:
            await connection.execute(TRADE_UPSERT.format(table="main.trades"), record_to_row(record))
        await connection.commit()
    finally:
        await connection.close()


async def archive_all(config: Config) -> int:
    connection = await open_database(config.service.database_path, config.service.archive_path)
    try:
        return await archive_once(connection, 0, 100, BASE_TIME + timedelta(days=365))
    finally:
        await connection.close()


def zero_cost(trade_id: str, minute: int) -> TradeRecord:
    return TradeRecord(
        trade_id=trade_id,
        status="resolved",
        venue="kalshi",
        market="FREE-SHARE",
        side="yes",
        size=Decimal(5),
        entry_price=Decimal(0),
        strategy="momentum",
        opened_at=BASE_TIME + timedelta(minutes=minute - 10),
        market_kind="binary",
        pnl=Decimal(5),
        outcome="win",
        exit_price=Decimal(1),
        resolved_at=BASE_TIME + timedelta(minutes=minute),
    )


def rows_by_id(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["trade_id"]: row for row in document["trades"]}


async def mixed_history(config: Config) -> None:
    """Store one trade of each kind, resolved at minutes 10 to 80, and archive the oldest."""
    await store(config, opened("old", minute=0), resolved("old", "0.37", minute=10, exit_price="1"))
    assert await archive_all(config) == 1
    await store(
        config,
        opened("share", minute=5),
        resolved("share", "0.37", minute=20, exit_price="1"),
        linear("long", "long", "2", "100", "0.2", minute=6),
        resolved("long", "9.8", minute=30, fees="0.2"),
        linear("short", "short", "1", "3000", "1.5", minute=7),
        resolved("short", "-31.5", minute=40),
        opened("draw", minute=8),
        resolved("draw", "0", minute=50, outcome="draw"),
        resolved("orphan", "1.5", minute=60),
        opened("void", minute=9),
        cancelled("void", minute=70),
        opened("live", minute=90),
        records=(zero_cost("free", minute=80),),
    )


# ---------------------------------------------------------------------------
# Per-trade values


async def test_binary_share_risk_is_cost_basis(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    share = rows_by_id(build_report(config, trades=20))["share"]
    assert share["status"] == "resolved"
    assert share["outcome"] == "win"
    assert share["pnl"] == 0.37
    # 10 shares at 0.96 plus the entry fee of 0.03.
    assert share["risk"] == 9.63
    assert share["return_on_risk"] == round(0.37 / 9.63, 6)
    assert share["holding_seconds"] == 15 * 60
    assert "undefined" not in share


async def test_linear_long_and_short(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    rows = rows_by_id(build_report(config, trades=20))
    long, short = rows["long"], rows["short"]
    assert (long["side"], long["outcome"]) == ("long", "win")
    assert long["risk"] == 200.2
    assert long["fees"] == 0.4
    assert long["return_on_risk"] == round(9.8 / 200.2, 6)
    assert long["holding_seconds"] == 24 * 60
    # A short's capital at risk is its notional at entry, as for a long.
    assert (short["side"], short["outcome"]) == ("short", "loss")
    assert short["risk"] == 3001.5
    assert short["return_on_risk"] == round(-31.5 / 3001.5, 6)


async def test_draw_returns_zero(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    draw = rows_by_id(build_report(config, trades=20))["draw"]
    assert draw["outcome"] == "draw"
    assert draw["pnl"] == 0.0
    assert draw["return_on_risk"] == 0.0


async def test_zero_cost_return_undefined(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    free = rows_by_id(build_report(config, trades=20))["free"]
    assert free["risk"] == 0.0
    assert free["pnl"] == 5.0
    assert free["return_on_risk"] is None
    assert free["undefined"] == {"return_on_risk": "zero_risk"}


async def test_missing_opening_reasons(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    orphan = rows_by_id(build_report(config, trades=20))["orphan"]
    assert orphan["pnl"] == 1.5
    assert orphan["strategy"] == "unknown"
    assert orphan["risk"] is None
    assert orphan["undefined"] == {
        "opened_at": "no_opening_time",
        "risk": "no_entry_price",
        "return_on_risk": "no_entry_price",
        "holding_seconds": "no_opening_time",
    }


async def test_archived_trade_listed(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    with closing(sqlite3.connect(config.service.archive_path)) as archive:
        assert archive.execute("SELECT trade_id FROM trades").fetchall() == [("old",)]
    rows = rows_by_id(build_report(config, trades=20))
    assert rows["old"]["archived"] is True
    assert rows["old"]["return_on_risk"] == round(0.37 / 9.63, 6)
    assert rows["share"]["archived"] is False


async def test_open_trade_still_open(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    live = rows_by_id(build_report(config, trades=20))["live"]
    assert live["status"] == "open"
    assert live["outcome"] is None
    assert live["risk"] == 9.63
    assert live["ended_at"] is None
    assert live["open_realized_pnl"] == 0.0
    assert live["undefined"] == {
        "ended_at": "still_open",
        "pnl": "still_open",
        "unrealized_pnl": "no_mark",
        "return_on_risk": "still_open",
        "holding_seconds": "still_open",
    }


async def test_open_position_shows_partial_exit(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    trim = parse_message(
        {
            "type": "trade_fill", "trade_id": "trim", "fill_id": "x1", "leg": "exit",
            "size": "4", "price": "0.99", "filled_at": (BASE_TIME + timedelta(minutes=3)).isoformat(),
        }
    )
    mark = parse_message(
        {"type": "trade_marked", "trade_id": "trim", "price": "0.90",
         "marked_at": (BASE_TIME + timedelta(minutes=4)).isoformat()}
    )
    await store(config, opened("trim", minute=0), trim, mark)
    row = rows_by_id(build_report(config, trades=5))["trim"]
    # 4 of 10 shares sold: 4 x 0.99 - 4 x 0.96 - 0.4 x 0.03 of entry fees.
    assert row["open_realized_pnl"] == 0.108
    # The 6 held at 0.90: 6 x 0.90 - 6 x 0.96 - 0.018 of entry fees left.
    assert row["unrealized_pnl"] == -0.378


async def test_cancelled_trade_has_no_result(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    void = rows_by_id(build_report(config, trades=20))["void"]
    assert void["status"] == "cancelled"
    assert void["ended_at"] == (BASE_TIME + timedelta(minutes=70)).isoformat()
    assert void["undefined"] == {
        "pnl": "cancelled",
        "return_on_risk": "cancelled",
        "holding_seconds": "cancelled",
    }


async def test_partial_fill_risk_flows_through(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    more = parse_message(
        {
            "type": "trade_fill", "trade_id": "grown", "fill_id": "f2", "leg": "entry",
            "size": "10", "price": "0.5", "fees": "0.02",
            "filled_at": (BASE_TIME + timedelta(minutes=2)).isoformat(),
        }
    )
    settled = resolved("grown", "9.0", minute=30, exit_price="1")
    await store(config, opened("grown", minute=0), more, settled)
    document = build_report(config, trades=5)
    grown = rows_by_id(document)["grown"]
    # Both entries' cost and fees: 10 x 0.96 + 0.03 and 10 x 0.5 + 0.02.
    assert grown["risk"] == 14.65
    assert grown["return_on_risk"] == round(9.0 / 14.65, 6)
    assert grown["return_on_risk"] == document["expectancy_r"]


# ---------------------------------------------------------------------------
# Order, time zone and agreement with the metrics


async def test_latest_by_end_time(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    everything = build_report(config, trades=20)["trades"]
    # Oldest first; the open trade at its opening (minute 90), the others at their end.
    assert [row["trade_id"] for row in everything] == [
        "old", "share", "long", "short", "draw", "orphan", "void", "free", "live"
    ]
    latest = build_report(config, trades=3)["trades"]
    assert [row["trade_id"] for row in latest] == ["void", "free", "live"]


async def test_equal_end_times_by_trade_id(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    messages = []
    for name in ("b", "c", "a"):
        messages += [opened(name), resolved(name, "1", minute=30)]
    await store(config, *messages)
    latest = build_report(config, trades=2)["trades"]
    assert [row["trade_id"] for row in latest] == ["b", "c"]


async def test_trade_in_both_files_read_from_main(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await store(config, opened("moved"), resolved("moved", "1", minute=20))
    await archive_all(config)
    # A move cut short leaves an older copy in the archive and the truth in main.
    await store(config, records=(TradeRecord("moved", "open", market="M", size=Decimal(1),
                                             entry_price=Decimal("0.5"), opened_at=BASE_TIME),))
    rows = build_report(config, trades=5)["trades"]
    assert len(rows) == 1
    assert rows[0]["status"] == "open"
    assert rows[0]["archived"] is False


async def test_times_in_configured_zone(tmp_path: Path) -> None:
    config = config_for(tmp_path, timezone="America/New_York")
    await store(config, opened("a"), resolved("a", "1", minute=30))
    row = build_report(config, trades=1)["trades"][0]
    # BASE_TIME is 12:00 UTC on 1 July, daylight saving time in New York.
    assert row["opened_at"] == "2026-07-01T08:00:00-04:00"
    assert row["ended_at"] == "2026-07-01T08:30:00-04:00"


async def test_rows_agree_with_aggregates(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    document = build_report(config, trades=100)
    resolved_rows = [row for row in document["trades"] if row["status"] == "resolved"]
    assert len(resolved_rows) == document["resolved"]
    returns = [row["return_on_risk"] for row in resolved_rows if row["return_on_risk"] is not None]
    assert sum(returns) / len(returns) == pytest.approx(document["expectancy_r"], abs=1e-6)
    holding_times = [row["holding_seconds"] for row in resolved_rows if row["holding_seconds"] is not None]
    average_holding = sum(holding_times) / len(holding_times)
    assert average_holding == pytest.approx(document["average_holding_seconds"], abs=1e-3)
    total_pnl = sum(row["pnl"] for row in resolved_rows)
    assert total_pnl == pytest.approx(document["realized_pnl"], abs=1e-9)


async def test_report_without_trades_has_no_key(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await store(config, opened("a"), resolved("a", "1"))
    assert "trades" not in build_report(config)


# ---------------------------------------------------------------------------
# Text table and command line


async def test_text_table_rows(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await mixed_history(config)
    lines = format_report(build_report(config, trades=20)).splitlines()
    title = lines.index("latest 9 trades by end time, oldest first (open ones by opening time)")
    header = lines[title + 1].split()
    assert header[:8] == ["trade", "strategy", "market", "result", "PnL", "at", "risk", "return"]
    rows = {line.split()[0]: line.split() for line in lines[title + 3 : title + 12]}
    assert rows["share"][3:9] == ["win", "0.37", "9.63", "3.84%", "15m", "00s"]
    assert rows["short"][3:7] == ["loss", "-31.50", "3,001.50", "-1.05%"]
    assert rows["live"][3:] == ["open", "-", "9.63", "-", "-", "-"]
    note = rows["free"][6]
    assert note.startswith("n/a[")
    assert f"  {note[3:]} Return: zero risk" in lines


async def test_text_shortens_long_market(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    question = "Will the Fed cut rates at the September 2026 meeting?"
    await store(config, opened("q", market=question), resolved("q", "1", minute=30))
    text = format_report(build_report(config, trades=1))
    assert "Will the Fed cut ...meeting?" in text


def run_report(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "report", *args],
        cwd=tmp_path,
        env={**os.environ, "TRADEPULSE_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("value", ["0", "-1", "abc", "2.5"])
def test_cli_rejects_bad_trades(tmp_path: Path, value: str) -> None:
    process = run_report(tmp_path, "--trades", value)
    assert process.returncode == 2
    expected = f"tradepulse: error: --trades must be a whole number greater than 0, got '{value}'\n"
    assert process.stderr == expected


async def test_cli_prints_trades_json(tmp_path: Path) -> None:
    await mixed_history(config_for(tmp_path))
    process = run_report(tmp_path, "--json", "--trades", "2")
    assert process.returncode == 0
    document = json.loads(process.stdout)
    assert [row["trade_id"] for row in document["trades"]] == ["free", "live"]


async def test_archive_index_serves_latest(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await store(config, opened("a"), resolved("a", "1", minute=20))
    await archive_all(config)
    prepare_archive_sync(config.service.archive_path)
    with closing(sqlite3.connect(config.service.database_path)) as connection:
        connection.execute("ATTACH DATABASE ? AS archive", (str(config.service.archive_path),))
        query = _latest_select(connection, "archive", "resolved_at")
        steps = connection.execute(f"EXPLAIN QUERY PLAN {query}", ("resolved", 5)).fetchall()
    plan = " ".join(step[3] for step in steps)
    assert "archive.trades USING INDEX trades_status_resolved" in plan
    assert "SCAN archive.trades" not in plan
