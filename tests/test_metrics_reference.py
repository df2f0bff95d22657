"""Figures on the real trade logs, checked against the values other tools computed.

The freqtrade reference values are those that freqtrade wrote into the
backtest result itself; the Kalshi values were computed from the file and
checked independently. Both logs go through the importer, the logger and
the lean rebuild from a real SQLite file, as in the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import FREQTRADE_JSON, KALSHI_CSV, shared_file

from actors.analytics.settings import MetricsSettings
from actors.logger import write_batch
from actors.metrics import load_state_sync
from actors.store import open_database
from importers import load_trade_log
from supervisor.config import MetricsConfig


async def rebuild(tmp_path: Path, log: Path, **settings: Any) -> dict[str, Any]:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    connection = await open_database(database, archive)
    await write_batch(connection, load_trade_log(log).messages)
    await connection.close()
    config = MetricsSettings.from_config(MetricsConfig(**settings))
    _, state = load_state_sync(database, archive, config)
    return state.snapshot()


@pytest.fixture(scope="module")
def freqtrade_log() -> Path:
    return shared_file(FREQTRADE_JSON)


async def test_freqtrade_outcomes(tmp_path: Path, freqtrade_log: Path) -> None:
    document = await rebuild(tmp_path, freqtrade_log, starting_balance=10_000)
    assert (document["wins"], document["losses"], document["draws"]) == (1051, 357, 6)
    assert round(document["realized_pnl"], 3) == 11081.837
    assert round(document["profit_factor"], 5) == 1.15844
    assert round(document["expectancy"], 4) == 7.8372


async def test_freqtrade_drawdown_and_streaks(tmp_path: Path, freqtrade_log: Path) -> None:
    document = await rebuild(tmp_path, freqtrade_log, starting_balance=10_000)
    largest = document["equity"]["max_drawdown"]
    assert round(largest["amount"], 3) == 5620.577
    assert round(largest["percent"], 5) == 0.23353
    # freqtrade's drawdown_start and drawdown_end for the same drawdown.
    assert largest["peak_at"] == "2024-03-30T18:45:00+00:00"
    assert largest["trough_at"] == "2024-04-13T20:00:00+00:00"
    assert document["max_drawdown"] == largest["amount"]
    assert document["streaks"]["longest_winning"] == 30
    assert document["streaks"]["longest_losing"] == 7
    assert round(document["equity"]["current"], 3) == 21081.837


async def test_freqtrade_cagr_matches(tmp_path: Path, freqtrade_log: Path) -> None:
    # freqtrade annualizes over its 485 backtest days; the UTC grid from the
    # first to the last resolution has the same 485 days here.
    document = await rebuild(tmp_path, freqtrade_log, starting_balance=10_000)
    assert document["returns"]["days"] == 485
    assert round(document["returns"]["cagr"], 6) == 0.752936


async def test_kalshi_reference_values(tmp_path: Path) -> None:
    document = await rebuild(tmp_path, shared_file(KALSHI_CSV))
    assert document["realized_pnl"] == -51.14
    assert round(document["profit_factor"], 3) == 0.704
    assert document["max_drawdown"] == 60.41
    assert round(document["forecast"]["brier_score"], 4) == 0.0504
    assert (document["wins"], document["losses"]) == (320, 18)
    assert round(document["fees"], 2) == 11.44


async def test_kalshi_without_balance_nulls(tmp_path: Path) -> None:
    document = await rebuild(tmp_path, shared_file(KALSHI_CSV))
    returns = document["returns"]
    assert returns["sharpe"] is None
    assert returns["undefined"]["sharpe"] == "no_starting_balance"
    assert document["equity"]["max_drawdown"]["percent"] is None
