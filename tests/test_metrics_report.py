"""``tradepulse report``: the feed's document, as JSON or as tables."""

from __future__ import annotations

from pathlib import Path

from helpers import opened, resolved

from actors.analytics.settings import MetricsSettings
from actors.logger import write_batch
from actors.metrics import load_state_sync
from actors.store import open_database
from supervisor.config import Config, build_config
from supervisor.report import build_report, format_report


async def stored_config(tmp_path: Path) -> Config:
    config = build_config(
        {"service": {"data_dir": str(tmp_path)}, "metrics": {"starting_balance": 100, "min_trades": 3}},
        environ={},
    )
    connection = await open_database(config.service.database_path, config.service.archive_path)
    await write_batch(
        connection,
        [opened("a", minute=0), resolved("a", "2", minute=30), opened("b", minute=60), resolved("b", "1", minute=90)],
    )
    await connection.close()
    return config


async def test_report_json_is_feed_document(tmp_path: Path) -> None:
    config = await stored_config(tmp_path)
    report = build_report(config)
    _, state = load_state_sync(
        config.service.database_path, config.service.archive_path, MetricsSettings.from_config(config.metrics)
    )
    live = state.snapshot()
    report.pop("generated_at")
    live.pop("generated_at")
    assert report == live
    assert report["settings"]["starting_balance"] == 100.0


async def test_report_tables_flag_small_samples(tmp_path: Path) -> None:
    text = format_report(build_report(await stored_config(tmp_path)))
    lines = text.splitlines()
    assert any(line.startswith("Win rate") and "100.00%*" in line for line in lines)
    # No losing trade: the profit factor is n/a with its reason in a note.
    assert any(line.startswith("Profit factor") and "n/a[1]" in line for line in lines)
    assert "  [1] Profit factor: no losing trades" in lines
    assert any(line.startswith("Longest winning streak") and line.endswith(" 2") for line in lines)
    assert "* small sample: fewer than 3 trades (or 30 days for daily returns)" in lines
