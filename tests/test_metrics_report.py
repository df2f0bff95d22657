"""``tradepulse report``: the feed's document, as JSON or as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import cancelled, opened, resolved

from actors.analytics.settings import MetricsSettings
from actors.logger import write_batch
from actors.messages import Message
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


# ---------------------------------------------------------------------------
# Small-sample flags of equity, execution, calibration buckets and returns


async def report_of(tmp_path: Path, *messages: Message, **metrics: Any) -> dict[str, Any]:
    config = build_config({"service": {"data_dir": str(tmp_path)}, "metrics": metrics}, environ={})
    connection = await open_database(config.service.database_path, config.service.archive_path)
    await write_batch(connection, list(messages))
    await connection.close()
    return build_report(config)


def line_of(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(label))


WIN_THEN_LOSS = (opened("a"), resolved("a", "2", minute=30), opened("b"), resolved("b", "-1", minute=60))


async def test_equity_flags_small_sample(tmp_path: Path) -> None:
    small = await report_of(tmp_path / "small", *WIN_THEN_LOSS, starting_balance=100, min_trades=3)
    assert small["equity"]["small_sample"] is True
    enough = await report_of(tmp_path / "enough", *WIN_THEN_LOSS, starting_balance=100, min_trades=2)
    assert enough["equity"]["small_sample"] is False


async def test_equity_text_marks_drawdowns_only(tmp_path: Path) -> None:
    text = format_report(await report_of(tmp_path, *WIN_THEN_LOSS, starting_balance=100, min_trades=3))
    assert line_of(text, "Max drawdown by amount").endswith(" 1.00*")
    assert line_of(text, "  of peak equity").endswith(" 0.98%*")
    assert line_of(text, "Current drawdown %").endswith(" 0.98%*")
    # A balance is exact whatever the sample.
    assert line_of(text, "Starting balance").endswith(" 100.00")
    assert line_of(text, "Current equity ").endswith(" 101.00")


async def test_execution_flags_small_sample(tmp_path: Path) -> None:
    trades = (opened("a"), opened("b"), opened("c"), cancelled("c"))
    enough = await report_of(tmp_path / "enough", *trades, min_trades=3)
    assert enough["execution"]["small_sample"] is False
    few = await report_of(tmp_path / "few", *trades, min_trades=4)
    assert few["execution"]["small_sample"] is True


async def test_execution_flag_counts_slipped_trades(tmp_path: Path) -> None:
    # Three trades for the fill rate, but one expected price for the slippage.
    trades = (opened("a", expected_price="0.95"), opened("b"), opened("c"))
    document = await report_of(tmp_path, *trades, min_trades=3)
    assert document["execution"]["slipped_trades"] == 1
    assert document["execution"]["small_sample"] is True
    text = format_report(document)
    assert line_of(text, "Fill rate (trades)").endswith(" 100.00%*")
    assert line_of(text, "Average slippage (bp)").endswith("*")


async def test_calibration_buckets_flag_small_sample(tmp_path: Path) -> None:
    document = await report_of(
        tmp_path,
        opened("a", probability="0.85"), resolved("a", "1"),
        opened("b", probability="0.82"), resolved("b", "-1"),
        opened("c", probability="0.3"), resolved("c", "1"),
        min_trades=2,
    )
    buckets = {bucket["low"]: bucket for bucket in document["forecast"]["calibration"]}
    assert buckets[0.8]["small_sample"] is False
    assert buckets[0.3]["small_sample"] is True
    text = format_report(document)
    assert line_of(text, "0.8-0.9").split()[-2:] == ["83.50%", "50.00%"]
    assert line_of(text, "0.3-0.4").split()[-2:] == ["30.00%*", "100.00%*"]


async def test_returns_flag_without_balance(tmp_path: Path) -> None:
    few = await report_of(tmp_path / "few", *WIN_THEN_LOSS, min_days=2)
    assert few["returns"]["undefined"]["sharpe"] == "no_starting_balance"
    assert few["returns"]["small_sample"] is True
    enough = await report_of(tmp_path / "enough", *WIN_THEN_LOSS, min_days=1)
    assert enough["returns"]["small_sample"] is False
