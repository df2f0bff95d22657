"""Shared fixtures: the third-party trade logs and temporary data folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

# The real trade logs live beside the repository, not in it; a user's machine
# usually has none, and the tests that need them skip.
SHARED_DATA = Path(os.environ.get("TRADEPULSE_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """Return a file from the shared trade logs, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real trade log {path} is absent (set TRADEPULSE_SHARED_DATA to its folder)")
    return path


KALSHI_CSV = "kalshi-btc15m-paper/paper_trades.csv"
POLYMARKET_CSV = "polymarket-llm-paper-fills/paper_trades.csv"
FREQTRADE_JSON = "freqtrade-meanrev-long-short/backtest-result-2024-05-14_16-15-48.json"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep test traffic on loopback even where a proxy is configured."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
