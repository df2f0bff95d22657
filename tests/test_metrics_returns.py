"""Return-based ratios agree with empyrical-reloaded on the same daily returns."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import empyrical
import numpy as np
import pytest
from conftest import FREQTRADE_JSON, shared_file
from helpers import resolved

from actors.analytics.settings import MetricsSettings
from actors.messages import Decision
from actors.metrics import MetricsState
from actors.trades import TradeRecord, apply_trade_message
from importers import load_trade_log
from supervisor.config import MetricsConfig

TOLERANCE = 1e-9


def state_of(messages: list[Any], **settings: Any) -> MetricsState:
    state = MetricsState(MetricsSettings.from_config(MetricsConfig(**settings)))
    records: dict[str, TradeRecord] = {}
    for message in messages:
        if isinstance(message, Decision):
            continue
        before = records.get(message.trade_id)
        after = apply_trade_message(before, message)
        records[message.trade_id] = after
        state.apply_change(before, after)
    return state


def check_against_empyrical(state: MetricsState, periods: int, risk_free: float) -> None:
    returns = np.array(state.returns.returns())
    figures = state.snapshot()["returns"]
    per_period = state.settings.risk_free_per_period
    assert per_period == pytest.approx((1 + risk_free) ** (1 / periods) - 1)
    expected = {
        "sharpe": empyrical.sharpe_ratio(returns, risk_free=per_period, annualization=periods),
        "sortino": empyrical.sortino_ratio(returns, required_return=per_period, annualization=periods),
        "max_drawdown": -empyrical.max_drawdown(returns),
        "cagr": empyrical.cagr(returns, annualization=periods),
        "calmar": empyrical.calmar_ratio(returns, annualization=periods),
    }
    for name, value in expected.items():
        assert figures[name] == pytest.approx(value, rel=0, abs=TOLERANCE), name


def random_trades(seed: int, days: int) -> list[Any]:
    generator = random.Random(seed)
    messages = []
    for index in range(days * 3):
        minute = generator.randrange(days * 1440)
        pnl = Decimal(generator.randrange(-9000, 10000)) / 100
        messages.append(resolved(f"t{index}", str(pnl), minute=minute))
    return messages


def test_random_trades_match() -> None:
    state = state_of(random_trades(1, 200), starting_balance=10_000)
    check_against_empyrical(state, 365, 0.0)


def test_risk_free_and_252_match() -> None:
    state = state_of(
        random_trades(2, 120), starting_balance=5_000, periods_per_year=252, risk_free_rate=0.04
    )
    check_against_empyrical(state, 252, 0.04)


def test_freqtrade_returns_match() -> None:
    messages = load_trade_log(shared_file(FREQTRADE_JSON)).messages
    state = state_of(messages, starting_balance=10_000)
    check_against_empyrical(state, 365, 0.0)


def test_empty_days_are_zero_returns() -> None:
    state = state_of(
        [resolved("a", "100", minute=0), resolved("b", "-50", minute=3 * 1440)],
        starting_balance=1_000,
    )
    assert state.returns.returns() == [0.1, 0.0, 0.0, -50 / 1100]


def test_single_day_is_undefined() -> None:
    state = state_of([resolved("a", "5", minute=0)], starting_balance=1_000)
    figures = state.snapshot()["returns"]
    assert figures["sharpe"] is None
    assert figures["undefined"]["sharpe"] == "fewer_than_two_periods"
    assert figures["undefined"]["cagr"] == "too_short_to_annualize"
    assert figures["small_sample"] is True


def test_constant_returns_zero_variance() -> None:
    # Two days with no trade between two trades of the same return: 0, 0.
    state = state_of(
        [resolved("a", "0", minute=0), resolved("b", "0", minute=2 * 1440)], starting_balance=100
    )
    figures = state.snapshot()["returns"]
    assert figures["sharpe"] is None
    assert figures["undefined"]["sharpe"] == "zero_variance"
    assert figures["undefined"]["sortino"] == "no_losing_periods"
    assert figures["undefined"]["calmar"] == "no_drawdown"


def test_blown_account_is_undefined() -> None:
    state = state_of(
        [resolved("a", "-150", minute=0), resolved("b", "10", minute=1440)], starting_balance=100
    )
    figures = state.snapshot()["returns"]
    assert figures["sharpe"] is None
    assert figures["undefined"]["sharpe"] == "equity_not_positive"


def test_blown_account_keeps_total_return() -> None:
    state = state_of(
        [resolved("a", "-150", minute=0), resolved("b", "250", minute=1440)], starting_balance=100
    )
    figures = state.snapshot()["returns"]
    assert figures["total_return"] == 1.0
    assert "total_return" not in figures["undefined"]
