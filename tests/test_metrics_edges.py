"""Edge cases of the metric definitions: nulls with reasons, exact sums, time zones."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import BASE_TIME, cancelled, decision, opened, resolved

from actors.analytics.series import TradeSeries
from actors.analytics.settings import MetricsSettings
from actors.logger import write_batch
from actors.messages import Decision, Message, dumps
from actors.metrics import MetricsState, load_state_sync
from actors.store import open_database
from actors.trades import TradeRecord, apply_trade_message
from supervisor.config import ConfigError, MetricsConfig, build_config


def state_of(*messages: Message, **settings: Any) -> MetricsState:
    state = MetricsState(MetricsSettings.from_config(MetricsConfig(**settings)))
    records: dict[str, TradeRecord] = {}
    for message in messages:
        if isinstance(message, Decision):
            state.apply_decision(message)
            continue
        before = records.get(message.trade_id)
        after = apply_trade_message(before, message)
        if after != before:
            records[message.trade_id] = after
            state.apply_change(before, after)
    return state


def at(text: str) -> str:
    return datetime.fromisoformat(text).isoformat()


def minutes_after_base(text: str) -> int:
    return int((datetime.fromisoformat(text) - BASE_TIME) / timedelta(minutes=1))


# ---------------------------------------------------------------------------
# Outcomes


def test_tolerance_makes_draws() -> None:
    document = state_of(
        resolved("a", "0.04"), resolved("b", "-0.05"), resolved("c", "0.06"),
        break_even_tolerance=0.05,
    ).snapshot()
    assert (document["wins"], document["losses"], document["draws"]) == (1, 0, 2)
    # Every cent still counts in the gross figures.
    assert document["gross_profit"] == 0.1
    assert document["gross_loss"] == 0.05


def test_bot_draw_outcome_kept() -> None:
    document = state_of(resolved("a", "0.5", outcome="draw")).snapshot()
    assert (document["wins"], document["draws"]) == (0, 1)


def test_win_rate_excludes_draws() -> None:
    document = state_of(resolved("a", "1"), resolved("b", "-1"), resolved("c", "0")).snapshot()
    assert document["win_rate"] == 0.5
    assert document["draws"] == 1
    assert document["expectancy"] == 0.0


def test_payoff_and_averages() -> None:
    document = state_of(resolved("a", "3"), resolved("b", "1"), resolved("c", "-4")).snapshot()
    assert document["average_win"] == 2.0
    assert document["average_loss"] == -4.0
    assert document["payoff_ratio"] == 0.5
    assert document["largest_win"] == 3.0
    assert document["largest_loss"] == -4.0


def test_expectancy_in_r() -> None:
    # Capital at risk: 10 shares at 0.96 plus 0.03 entry fees is 9.63.
    document = state_of(
        opened("a"), resolved("a", "-9.63"), opened("b"), resolved("b", "0.37")
    ).snapshot()
    assert document["expectancy_r"] == pytest.approx((-1 + 0.37 / 9.63) / 2, abs=1e-6)


def test_holding_time() -> None:
    document = state_of(opened("a", minute=0), resolved("a", "1", minute=90)).snapshot()
    assert document["average_holding_seconds"] == 5400.0


# ---------------------------------------------------------------------------
# Undefined values


def test_empty_state_nulls_with_reasons() -> None:
    document = MetricsState().snapshot()
    assert document["win_rate"] is None
    assert document["undefined"]["win_rate"] == "no_decided_trades"
    assert document["undefined"]["profit_factor"] == "no_trades"
    assert document["undefined"]["expectancy"] == "no_trades"
    assert document["small_sample"] is True
    assert document["streaks"]["current"]["kind"] is None


def test_no_losses_profit_factor_null() -> None:
    document = state_of(resolved("a", "1")).snapshot()
    assert document["profit_factor"] is None
    assert document["undefined"]["profit_factor"] == "no_losing_trades"
    assert document["undefined"]["payoff_ratio"] == "no_losing_trades"


def test_json_has_no_nan_or_infinity() -> None:
    documents = [
        MetricsState().snapshot(),
        state_of(resolved("a", "0")).snapshot(),
        state_of(resolved("a", "-1e15"), starting_balance=1.0).snapshot(),
        state_of(opened("a", probability="1"), resolved("a", "-9.63")).snapshot(),
    ]
    for document in documents:
        text = dumps(document)
        json.loads(text)
        assert "NaN" not in text
        assert "Infinity" not in text


def test_small_sample_flag() -> None:
    messages = [resolved(f"t{index}", "1", minute=index) for index in range(3)]
    assert state_of(*messages, min_trades=3).snapshot()["small_sample"] is False
    assert state_of(*messages, min_trades=4).snapshot()["small_sample"] is True


# ---------------------------------------------------------------------------
# Exact money


def test_extreme_sizes_cost_exact() -> None:
    state = state_of(opened("a", size="1e12", entry_price="1e-9", fees="0", market_kind="linear"))
    assert state.total.exposure == Decimal("1000")


def test_sums_exact_across_magnitudes() -> None:
    pnls = ["1e15", "0.000000000001", "-999999999999999.999999999999", "123456789.123456789"]
    state = state_of(*[resolved(f"t{index}", pnl, minute=index) for index, pnl in enumerate(pnls)])
    exact = sum((Decimal(pnl) for pnl in pnls), Decimal(0))
    assert state.total.pnl == exact
    cumulative, _, _ = state.series.end()
    assert state.series.amount(cumulative) == exact


def test_series_beyond_64_bits() -> None:
    series = TradeSeries(Decimal(0))
    series.add(0, "a", Decimal("999999999999999.000000000001"), 1)
    series.add(1, "b", Decimal("-1e15"), -1)
    assert isinstance(series.pnl.values, list)
    assert series.amount(series.end()[0]) == Decimal("-0.999999999999")


# ---------------------------------------------------------------------------
# Curve and windows


def test_drawdown_peak_trough_recovery() -> None:
    state = state_of(
        resolved("a", "10", minute=60), resolved("b", "-4", minute=120),
        resolved("c", "-3", minute=180), resolved("d", "8", minute=240),
        starting_balance=100,
    )
    largest = state.snapshot()["equity"]["max_drawdown"]
    assert largest["amount"] == 7.0
    assert largest["percent"] == pytest.approx(7 / 110)
    assert largest["peak_at"] == at("2026-07-01T13:00:00+00:00")
    assert largest["trough_at"] == at("2026-07-01T15:00:00+00:00")
    assert largest["recovered_at"] == at("2026-07-01T16:00:00+00:00")
    assert largest["duration_seconds"] == 3 * 3600


def test_drawdown_from_start_has_no_peak_time() -> None:
    state = state_of(resolved("a", "-5", minute=60))
    largest = state.snapshot()["equity"]["max_drawdown"]
    assert largest["amount"] == 5.0
    assert largest["peak_at"] is None
    assert largest["undefined"]["duration_seconds"] == "peak_is_start"


def test_current_drawdown() -> None:
    state = state_of(resolved("a", "10", minute=1), resolved("b", "-4", minute=2), starting_balance=90)
    equity = state.snapshot()["equity"]
    assert equity["current"] == 96.0
    assert equity["current_drawdown"] == 4.0
    assert equity["current_drawdown_percent"] == 0.04


def test_streaks_broken_by_draws() -> None:
    pnls = ["1", "1", "0", "1", "-1", "-1", "-1", "2"]
    state = state_of(*[resolved(f"t{index}", pnl, minute=index) for index, pnl in enumerate(pnls)])
    streaks = state.snapshot()["streaks"]
    assert (streaks["longest_winning"], streaks["longest_losing"]) == (2, 3)
    assert streaks["current"] == {"kind": "winning", "length": 1}


def test_rolling_windows() -> None:
    messages = [resolved(f"t{index}", "1", minute=index * 60 * 12) for index in range(10)]
    windows = state_of(*messages, rolling_trades=3).snapshot()["windows"]
    assert windows["last_3_trades"]["resolved"] == 3
    # The trades of the 24 hours up to the latest resolution, that one included.
    assert windows["last_24h"]["resolved"] == 2
    assert windows["last_7d"]["resolved"] == 10
    assert windows["end"] == at("2026-07-06T00:00:00+00:00")


# ---------------------------------------------------------------------------
# Time zones


def test_calendar_days_in_local_time() -> None:
    # 03:30 UTC on 2 July is still 1 July in New York (UTC-4 in summer).
    messages = [
        resolved("a", "1", minute=minutes_after_base("2026-07-01T20:00:00+00:00")),
        resolved("b", "2", minute=minutes_after_base("2026-07-02T03:30:00+00:00")),
        resolved("c", "4", minute=minutes_after_base("2026-07-02T05:00:00+00:00")),
    ]
    calendar = state_of(*messages, timezone="America/New_York").snapshot()["calendar"]
    days = {row["start"]: row["realized_pnl"] for row in calendar["by_day"]}
    assert days == {"2026-07-01": 3.0, "2026-07-02": 4.0}
    assert calendar["by_week"][0]["start"] == "2026-06-29"
    assert calendar["by_month"][0]["start"] == "2026-07-01"


def test_hours_across_dst_change() -> None:
    # New York moves from UTC-5 to UTC-4 at 07:00 UTC on 8 March 2026.
    before = "2026-03-08T06:30:00+00:00"  # 01:30 EST
    after = "2026-03-08T07:30:00+00:00"  # 03:30 EDT
    state = state_of(
        opened("a", minute=minutes_after_base(before)),
        opened("b", minute=minutes_after_base(after)),
        timezone="America/New_York",
    )
    patterns = state.snapshot()["patterns"]
    assert [row["hour"] for row in patterns["by_hour"]] == [1, 3]
    assert [row["weekday"] for row in patterns["by_weekday"]] == ["Sunday"]


def test_times_reported_in_zone() -> None:
    state = state_of(resolved("a", "-1", minute=0), timezone="Europe/Berlin")
    largest = state.snapshot()["equity"]["max_drawdown"]
    assert largest["trough_at"] == "2026-07-01T14:00:00+02:00"


def test_unknown_time_zone_rejected() -> None:
    with pytest.raises(ConfigError, match="metrics.timezone"):
        MetricsSettings.from_config(MetricsConfig(timezone="Mars/Olympus"))


def test_metrics_keys_in_toml() -> None:
    config = build_config(
        {"metrics": {"starting_balance": 10_000, "timezone": "Asia/Tokyo", "periods_per_year": 252}},
        environ={},
    )
    settings = MetricsSettings.from_config(config.metrics)
    assert settings.starting_balance == Decimal(10_000)
    assert settings.zone.key == "Asia/Tokyo"


# ---------------------------------------------------------------------------
# Forecasts, decisions and execution


def test_brier_and_log_loss() -> None:
    state = state_of(
        opened("a", probability="0.8"), resolved("a", "1"),
        opened("b", probability="0.8"), resolved("b", "-1"),
        opened("c", probability="1"), resolved("c", "-1"),
        opened("d"), resolved("d", "1"),
    )
    forecast = state.snapshot()["forecast"]
    assert forecast["scored_trades"] == 3
    assert forecast["brier_score"] == pytest.approx((0.04 + 0.64 + 1) / 3, abs=1e-6)
    # A certain forecast that missed costs about 34.5 (the probability is
    # clipped to 1 - 1e-15 in double precision), not infinity.
    certain_miss = -math.log(1 - (1 - 1e-15))
    assert forecast["log_loss"] == pytest.approx((-math.log(0.8) - math.log(0.2) + certain_miss) / 3, abs=1e-6)
    buckets = {bucket["low"]: bucket for bucket in forecast["calibration"]}
    assert buckets[0.8]["trades"] == 2
    assert buckets[0.8]["win_rate"] == 0.5
    assert buckets[0.9]["mean_probability"] == 1.0


def test_missed_opportunity_scored() -> None:
    state = state_of(
        decision("hold", market="M", side="yes", params={"price": "0.4", "size": 10}),
        decision("hold", market="M", side="no", minute=1, params={"price": "0.6", "size": 10}),
        opened("t", market="M", side="no"), resolved("t", "-9.63", exit_price="0"),
    )
    missed = state.snapshot()["missed_opportunities"]
    assert (missed["holds"], missed["scored_holds"], missed["missed_wins"]) == (2, 2, 1)
    assert missed["regret_rate"] == 0.5
    assert missed["missed_pnl"] == 6.0


def test_missed_without_price_is_null() -> None:
    state = state_of(
        decision("hold", market="M", side="yes"),
        opened("t", market="M", side="yes"), resolved("t", "0.37", exit_price="1"),
    )
    missed = state.snapshot()["missed_opportunities"]
    assert missed["missed_wins"] == 1
    assert missed["missed_pnl"] is None
    assert missed["undefined"]["missed_pnl"] == "holds_without_price"


def test_fill_rate_counts_cancellations() -> None:
    state = state_of(opened("a"), opened("b"), cancelled("b"), opened("c"), resolved("c", "1"))
    execution = state.snapshot()["execution"]
    assert (execution["filled"], execution["cancelled"]) == (2, 1)
    assert execution["fill_rate"] == pytest.approx(2 / 3, abs=1e-6)


def test_markets_over_cap_share_row() -> None:
    messages = [opened(f"t{index}", market=f"m{index}") for index in range(4)]
    document = state_of(*messages, max_markets=2).snapshot()
    assert set(document["by_market"]) == {"m0", "m1", "(other)"}
    assert document["markets_tracked"] == 3
    assert document["by_market"]["(other)"]["open"] == 2
    assert document["markets_over_cap"] is True


def test_breakdowns_by_tag_and_venue() -> None:
    document = state_of(
        opened("a", tags=["news", "fast"], venue="kalshi"), resolved("a", "2"),
        opened("b", tags=["news"], venue="polymarket", signal_type="breakout"), resolved("b", "-1"),
    ).snapshot()
    assert document["by_tag"]["news"]["resolved"] == 2
    assert document["by_tag"]["fast"]["realized_pnl"] == 2.0
    assert set(document["by_venue"]) == {"kalshi", "polymarket"}
    assert document["by_signal_type"]["breakout"]["losses"] == 1


# ---------------------------------------------------------------------------
# Fields that trade records do not have yet: a mark, an expected price and a
# requested size. A subclass stands in for the record that will carry them.


@dataclass(frozen=True, slots=True)
class MarkedRecord(TradeRecord):
    mark_price: Decimal | None = None
    expected_price: Decimal | None = None
    requested_size: Decimal | None = None


def marked(trade_id: str, **fields: Any) -> MarkedRecord:
    base = apply_trade_message(None, opened(trade_id))
    values = {name: getattr(base, name) for name in base.__dataclass_fields__}
    return MarkedRecord(**{**values, **fields})


def test_open_position_marked_to_market() -> None:
    state = MetricsState(MetricsSettings.from_config(MetricsConfig(starting_balance=100)))
    # 10 shares bought at 0.96 with 0.03 of fees, now quoted at 0.90.
    state.apply_change(None, marked("a", mark_price=Decimal("0.90")))
    equity = state.snapshot()["equity"]
    assert equity["unrealized_pnl"] == -0.63
    assert equity["current_marked"] == 99.37
    assert equity["current_drawdown_marked"] == 0.63
    assert state.snapshot()["marked_open"] == 1


def test_slippage_against_expected() -> None:
    state = MetricsState()
    state.apply_change(None, marked("a", expected_price=Decimal("0.95")))
    state.apply_change(None, marked("b", side="short", market_kind="linear", entry_price=Decimal("100"),
                                    expected_price=Decimal("101"), size=Decimal(2)))
    execution = state.snapshot()["execution"]
    # The buy paid 0.01 more on 10 shares; the short sold 1 lower on 2.
    assert execution["slippage"] == 2.1
    assert execution["average_slippage_bps"] == pytest.approx((100 / 0.95 + 10_000 / 101) / 2, abs=1e-3)


def test_fill_rate_by_size() -> None:
    state = MetricsState()
    state.apply_change(None, marked("a", requested_size=Decimal(20)))
    assert state.snapshot()["execution"]["size_fill_rate"] == 0.5


async def test_loader_reads_optional_columns(tmp_path: Path) -> None:
    database, archive = tmp_path / "t.sqlite", tmp_path / "a.sqlite"
    connection = await open_database(database, archive)
    await write_batch(connection, [opened("a")])
    await connection.close()
    with sqlite3.connect(database) as raw:
        raw.execute("UPDATE trades SET mark_price = '0.90', expected_price = '0.95', requested_size = '20'")
    _, state = load_state_sync(database, archive)
    document = state.snapshot()
    assert document["equity"]["unrealized_pnl"] == -0.63
    assert document["execution"]["slippage"] == 0.1
    assert document["execution"]["size_fill_rate"] == 0.5


def test_largest_loss_undefined_with_reason() -> None:
    from actors.metrics import MetricsState
    from helpers import opened, resolved
    from test_metrics import feed

    state = MetricsState()
    feed(state, opened("a"), resolved("a", "1"))
    snapshot = state.snapshot()
    assert snapshot["largest_win"] == 1.0
    assert snapshot["largest_loss"] is None
    assert snapshot["undefined"]["largest_loss"] == "no_losing_trades"
    assert "largest_loss" not in state.snapshot()["by_strategy"]["momentum"].get("undefined", {})
