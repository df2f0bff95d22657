"""Trade log import: the three real logs against their reference figures, and
synthetic files for every kind of bad row and bad file."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from actors.messages import Decision, TradeCancelled, TradeOpened, TradeResolved
from actors.trades import outcome_of
from conftest import FREQTRADE_JSON, KALSHI_CSV, POLYMARKET_CSV, shared_file
from importers import (
    FORMATS,
    ImportResult,
    RowProblem,
    TradeLogError,
    detect_format,
    event_time,
    load_trade_log,
)

KALSHI_HEADER = "ticker,side,contracts,entry_price,entry_ts,exit_price,exit_ts,exit_reason,fees,pnl"
KALSHI_WIN = "KXBTC15M-26JUL271245-45,yes,10,96,1785170216,100,1785170718,settlement,0.03,0.37"
KALSHI_LOSS = "KXBTC15M-26JUL271330-30,no,10,95,1785172905,0,1785173418,settlement,0.04,-9.54"
POLYMARKET_HEADER = [
    "Timestamp",
    "Market",
    "Action",
    "Size",
    "Routing",
    "Execution Price",
    "AI Probability",
    "Reasoning",
]


def write_text(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def write_polymarket(tmp_path: Path, rows: list[list[str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(POLYMARKET_HEADER)
    writer.writerows(rows)
    path = tmp_path / "fills.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def freqtrade_trade(**changes: Any) -> dict[str, Any]:
    trade: dict[str, Any] = {
        "pair": "LTC/USDT:USDT",
        "amount": 2,
        "open_date": "2024-01-02 04:00:00+00:00",
        "close_date": "2024-01-02 07:15:00+00:00",
        "open_rate": 70.5,
        "close_rate": 72.5,
        "fee_open": 0.001,
        "fee_close": 0.001,
        "profit_abs": 3.857,
        "is_open": False,
        "enter_tag": "",
        "is_short": False,
        "open_timestamp": 1704168000000,
    }
    trade.update(changes)
    return {key: value for key, value in trade.items() if value is not ...}


def write_freqtrade(tmp_path: Path, trades: list[Any], **strategy_data: Any) -> Path:
    document = {"strategy": {"MeanRev": {"trades": trades, **strategy_data}}}
    path = tmp_path / "backtest-result.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def of_type(result: ImportResult, kind: type) -> list[Any]:
    return [message for message in result.messages if isinstance(message, kind)]


def total_pnl(result: ImportResult) -> Decimal:
    return sum((message.pnl for message in of_type(result, TradeResolved)), Decimal(0))


def outcomes(result: ImportResult) -> Counter[str]:
    return Counter(outcome_of(message.pnl) for message in of_type(result, TradeResolved))


def assert_replayable(result: ImportResult) -> None:
    """Check the order a replay needs: chronological, each trade opened before it ends."""
    times = [event_time(message) for message in result.messages]
    assert times == sorted(times)
    opened_ids: set[str] = set()
    resolved_ids: set[str] = set()
    for message in result.messages:
        if isinstance(message, TradeOpened):
            assert message.trade_id not in opened_ids, f"{message.trade_id} opened twice"
            opened_ids.add(message.trade_id)
        elif isinstance(message, TradeResolved):
            assert message.trade_id in opened_ids, f"{message.trade_id} resolved before opened"
            assert message.trade_id not in resolved_ids, f"{message.trade_id} resolved twice"
            resolved_ids.add(message.trade_id)


# ---------------------------------------------------------------------------
# The real logs.


def test_freqtrade_reference_figures() -> None:
    result = load_trade_log(shared_file(FREQTRADE_JSON))

    assert result.format == "freqtrade"
    assert result.problems == []
    assert len(of_type(result, TradeOpened)) == 1414
    assert len(of_type(result, TradeResolved)) == 1414
    assert outcomes(result) == Counter({"win": 1051, "loss": 357, "draw": 6})
    assert total_pnl(result) == Decimal("11081.83726156")
    assert total_pnl(result).quantize(Decimal("0.001")) == Decimal("11081.837")
    assert_replayable(result)


def test_freqtrade_real_trade_fields() -> None:
    result = load_trade_log(shared_file(FREQTRADE_JSON))
    opened = {message.trade_id: message for message in of_type(result, TradeOpened)}

    assert Counter(message.side for message in opened.values()) == Counter(
        {"long": 771, "short": 643}
    )
    first = opened["LTC/USDT:USDT:1672632000000"]
    assert first.side == "short"
    assert first.size == Decimal("43.481")
    assert first.entry_price == Decimal("70.88")
    assert first.fees == Decimal("43.481") * Decimal("70.88") * Decimal("0.0002")
    assert first.strategy == "MeanReversionStrategy"
    assert first.venue == "freqtrade"
    assert first.market_kind == "linear"
    assert first.tags == ()
    assert first.opened_at == datetime(2023, 1, 2, 4, tzinfo=UTC)


def test_kalshi_reference_figures() -> None:
    result = load_trade_log(shared_file(KALSHI_CSV))

    assert result.format == "kalshi"
    assert result.problems == []
    assert len(of_type(result, TradeOpened)) == 338
    assert len(of_type(result, TradeResolved)) == 338
    assert outcomes(result) == Counter({"win": 320, "loss": 18})
    assert total_pnl(result) == Decimal("-51.14")
    assert sum(message.fees for message in of_type(result, TradeOpened)) == Decimal("11.44")
    assert_replayable(result)


def test_kalshi_real_row_fields() -> None:
    result = load_trade_log(shared_file(KALSHI_CSV))
    opened = of_type(result, TradeOpened)[0]
    resolved = of_type(result, TradeResolved)[0]

    assert opened.trade_id == "kalshi:KXBTC15M-26JUL271245-45"
    assert opened.side == "yes"
    assert opened.size == Decimal(10)
    assert opened.entry_price == Decimal("0.96")
    assert opened.probability == Decimal("0.96")
    assert opened.fees == Decimal("0.03")
    assert opened.strategy == "default"
    assert opened.market_kind == "binary"
    assert opened.opened_at == datetime(2026, 7, 27, 16, 36, 56, tzinfo=UTC)
    assert resolved.trade_id == opened.trade_id
    assert resolved.pnl == Decimal("0.37")
    assert resolved.exit_price == Decimal(1)


def test_polymarket_real_positions() -> None:
    path = shared_file(POLYMARKET_CSV)
    result = load_trade_log(path)
    resolved_ids = {message.trade_id for message in of_type(result, TradeResolved)}
    opened = of_type(result, TradeOpened)
    still_open = [message for message in opened if message.trade_id not in resolved_ids]

    assert result.format == "polymarket"
    assert len(of_type(result, Decision)) == 234
    assert len(opened) == 225
    assert len(resolved_ids) == 184
    assert len(still_open) == 41
    assert_replayable(result)

    # Independent count: a market and side is open when its last row with a
    # positive Size is a BUY.
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    last_action: dict[tuple[str, str], str] = {}
    for row in rows:
        if Decimal(row["Size"]) > 0:
            kind, _, side = row["Action"].partition("_")
            last_action[(row["Market"].strip(), side.lower())] = kind
    expected_open = {key for key, kind in last_action.items() if kind == "BUY"}
    assert {(message.market, message.side) for message in still_open} == expected_open

    exited_markets = {row["Market"].strip() for row in rows if row["Action"].startswith("SELL")}
    never_exited = {row["Market"].strip() for row in rows} - exited_markets
    assert len(never_exited) == 16
    for message in opened:
        if message.market in never_exited:
            assert message.trade_id not in resolved_ids


def test_polymarket_real_problems() -> None:
    result = load_trade_log(shared_file(POLYMARKET_CSV))

    # The bot wrote two exits twice within the same second; the copies find
    # no open position left.
    assert [problem.line for problem in result.problems] == [72, 73, 125]
    for problem in result.problems:
        assert "repeats the exit on line" in problem.reason


def test_polymarket_real_pnl_matches_bot_roi() -> None:
    path = shared_file(POLYMARKET_CSV)
    result = load_trade_log(path)
    opened = {message.trade_id: message for message in of_type(result, TradeOpened)}
    fills = Counter(message.trade_id for message in of_type(result, Decision))

    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    reported_roi: dict[tuple[str, str, str], Decimal] = {}
    for row in rows:
        match = re.search(r"(-?\d+(?:\.\d+)?)% ROI", row["Reasoning"])
        if row["Action"].startswith("SELL") and Decimal(row["Size"]) > 0 and match:
            key = (row["Timestamp"], row["Market"].strip(), row["Action"][5:].lower())
            reported_roi.setdefault(key, Decimal(match.group(1)))

    mismatched: list[str] = []
    for resolved in of_type(result, TradeResolved):
        position = opened[resolved.trade_id]
        if fills[resolved.trade_id] != 1:
            continue
        cost = position.size * position.entry_price
        roi = resolved.pnl / cost * 100
        key = (f"{resolved.resolved_at:%Y-%m-%d %H:%M:%S}", position.market, position.side)
        # The bot rounds a float ROI to one place, so an exact 23.75 may show as 23.7.
        if abs(roi - reported_roi[key]) > Decimal("0.05"):
            mismatched.append(f"{key[0]} {position.side}")

    # Two exits carry a wrong ROI text in the ledger: a Stop Loss logged at
    # -85.9% for a sale above the entry price, and the NO side of a pair of
    # exits that repeats the YES side's ROI.
    assert sorted(mismatched) == ["2026-06-15 09:33:57 yes", "2026-06-27 23:11:08 no"]


@pytest.mark.parametrize(
    ("relative", "expected"),
    [(FREQTRADE_JSON, "freqtrade"), (KALSHI_CSV, "kalshi"), (POLYMARKET_CSV, "polymarket")],
)
def test_detect_real_formats(relative: str, expected: str) -> None:
    assert detect_format(shared_file(relative)) == expected


# ---------------------------------------------------------------------------
# Synthetic Polymarket ledgers.


def test_polymarket_hand_computed_pnl(tmp_path: Path) -> None:
    market = "Will it rain, in Paris? "
    path = write_polymarket(
        tmp_path,
        [
            ["2026-06-01 10:00:00", market, "BUY_YES", "10.0", "TAKER", "0.25", "40.0%", "x"],
            ["2026-06-01 11:00:00", market, "BUY_YES", "10.0", "MAKER", "0.5", "60.0%", "y"],
            ["2026-06-01 11:30:00", "Other", "BUY_NO", "10.0", "TAKER", "0.8", "30.0%", ""],
            ["2026-06-02 09:00:00", market, "SELL_YES", "0.0", "EXIT", "0.4", "N/A", ""],
            ["2026-06-02 09:00:00", market, "SELL_NO", "0.0", "EXIT", "0.6", "N/A", ""],
            ["2026-06-03 09:00:00", "Other", "SELL_NO", "10.0", "EXIT", "0.5", "N/A", ""],
            ["2026-06-04 09:00:00", market, "BUY_YES", "10.0", "TAKER", "0.2", "N/A", "z"],
        ],
    )
    result = load_trade_log(path)
    opened = {message.trade_id: message for message in of_type(result, TradeOpened)}
    resolved = {message.trade_id: message for message in of_type(result, TradeResolved)}
    rain = [trade_id for trade_id in opened if opened[trade_id].market == market.strip()]
    other = [trade_id for trade_id in opened if opened[trade_id].market == "Other"]

    assert result.problems == []
    assert len(rain) == 2
    first, second = sorted(rain)
    assert first.endswith(":yes:1")
    assert second.endswith(":yes:2")
    # 40 shares at 0.25 and 20 at 0.5 cost 20 USDC, 1/3 per share.
    assert opened[first].size == Decimal(60)
    assert opened[first].entry_price == Decimal("0.333333333333")
    assert opened[first].probability == Decimal("0.4")
    assert opened[first].signal_type == "TAKER"
    assert opened[first].opened_at == datetime(2026, 6, 1, 10, tzinfo=UTC)
    # The exit row has Size 0.0 but still sells all 60 shares: 60 * 0.4 - 20.
    assert resolved[first].pnl == Decimal("4")
    assert resolved[first].exit_price == Decimal("0.4")
    assert second not in resolved
    assert opened[second].probability is None
    # 12.5 NO shares bought at 0.8 for 10 USDC and sold at 0.5.
    assert resolved[other[0]].pnl == Decimal("-3.75")
    assert opened[other[0]].probability == Decimal("0.7")
    assert total_pnl(result) == Decimal("0.25")
    assert_replayable(result)


def test_polymarket_decisions_per_entry(tmp_path: Path) -> None:
    path = write_polymarket(
        tmp_path,
        [
            ["2026-06-01 10:00:00", "M", "BUY_NO", "10.0", "MAKER", "0.9", "5.0%", ""],
            ["2026-06-01 12:00:00", "M", "BUY_NO", "10.0", "TAKER", "0.8", "20.0%", ""],
        ],
    )
    result = load_trade_log(path, strategy="llm-news")
    decisions = of_type(result, Decision)
    opened = of_type(result, TradeOpened)

    assert len(decisions) == 2
    assert len(opened) == 1
    assert [decision.trade_id for decision in decisions] == [opened[0].trade_id] * 2
    assert len({decision.decision_id for decision in decisions}) == 2
    assert [decision.probability for decision in decisions] == [Decimal("0.95"), Decimal("0.8")]
    assert [decision.signal_type for decision in decisions] == ["MAKER", "TAKER"]
    assert all(decision.action == "trade" for decision in decisions)
    assert all(decision.strategy == "llm-news" for decision in decisions)
    assert opened[0].strategy == "llm-news"
    assert opened[0].probability == Decimal("0.95")
    assert decisions[0].decided_at == datetime(2026, 6, 1, 10, tzinfo=UTC)


def test_polymarket_ids_stable_when_appended(tmp_path: Path) -> None:
    rows = [
        ["2026-06-01 10:00:00", "M", "BUY_YES", "10.0", "TAKER", "0.5", "60.0%", ""],
        ["2026-06-02 10:00:00", "M", "SELL_YES", "10.0", "EXIT (Stop Loss)", "0.4", "N/A", ""],
    ]
    before = load_trade_log(write_polymarket(tmp_path, rows))
    rows.append(["2026-06-03 10:00:00", "M", "BUY_YES", "10.0", "TAKER", "0.4", "60.0%", ""])
    after = load_trade_log(write_polymarket(tmp_path, rows))

    assert after.messages[: len(before.messages)] == before.messages


def test_polymarket_sell_without_position(tmp_path: Path) -> None:
    path = write_polymarket(
        tmp_path,
        [
            ["2026-06-01 10:00:00", "M", "SELL_YES", "0.0", "EXIT (Stop Loss)", "0.4", "N/A", ""],
            ["2026-06-01 10:00:00", "M", "SELL_NO", "10.0", "EXIT (Stop Loss)", "0.6", "N/A", ""],
        ],
    )
    result = load_trade_log(path)

    assert result.messages == []
    assert len(result.problems) == 1
    assert result.problems[0].line == 3
    assert "no open NO position" in result.problems[0].reason


def test_polymarket_bad_rows_reported(tmp_path: Path) -> None:
    path = write_polymarket(
        tmp_path,
        [
            ["2026-06-01 10:00:00", "A", "BUY_YES", "10.0", "TAKER", "0.5", "60.0%", ""],
            ["yesterday", "B", "BUY_YES", "10.0", "TAKER", "0.5", "60.0%", ""],
            ["2026-06-01 10:00:00", "C", "HOLD", "10.0", "TAKER", "0.5", "60.0%", ""],
            ["2026-06-01 10:00:00", "D", "BUY_YES", "10.0", "TAKER", "1.5", "60.0%", ""],
            ["2026-06-01 10:00:00", "E", "BUY_YES", "10.0", "TAKER", "0.5", "high", ""],
            ["2026-06-01 10:00:00", "F", "BUY_YES", "0.0", "TAKER", "0.5", "60.0%", ""],
            ["2026-06-01 10:00:00", "G", "BUY_YES", "10.0", "TAKER", "0.5", "160.0%", ""],
            ["2026-06-01 10:00:00", " ", "BUY_YES", "10.0", "TAKER", "0.5", "60.0%", ""],
            ["2026-06-01 10:00:00", "I", "BUY_YES", "1e999999", "TAKER", "0.5", "60.0%", ""],
            ["2026-06-01 10:00:00", "J", "BUY_YES", "10.0", "TAKER", "1e-999999", "60.0%", ""],
            ["2026-06-01 10:00:00", "H", "BUY_YES", "10.0", "TAKER", "0.5", "60.0%", ""],
        ],
    )
    result = load_trade_log(path)
    reasons = {problem.line: problem.reason for problem in result.problems}

    assert [message.market for message in of_type(result, TradeOpened)] == ["A", "H"]
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert "Timestamp" in reasons[3]
    assert "Action" in reasons[4]
    assert "Execution Price" in reasons[5]
    assert "AI Probability" in reasons[6]
    assert "positive Size" in reasons[7]
    assert "AI Probability" in reasons[8]
    assert "Market" in reasons[9]
    assert "magnitude above" in reasons[10]
    assert "smallest accepted value" in reasons[11]


def test_polymarket_exit_before_entry(tmp_path: Path) -> None:
    path = write_polymarket(
        tmp_path,
        [
            ["2026-06-02 10:00:00", "M", "BUY_YES", "10.0", "TAKER", "0.5", "60.0%", ""],
            ["2026-06-01 10:00:00", "M", "SELL_YES", "10.0", "EXIT (Stop Loss)", "0.4", "N/A", ""],
        ],
    )
    result = load_trade_log(path)

    assert [problem.line for problem in result.problems] == [3]
    assert "before it was opened" in result.problems[0].reason
    assert of_type(result, TradeResolved) == []
    assert len(of_type(result, TradeOpened)) == 1


def test_polymarket_multiline_field_line(tmp_path: Path) -> None:
    path = write_polymarket(
        tmp_path,
        [
            ["2026-06-01 10:00:00", "M", "BUY_YES", "10.0", "TAKER", "0.5", "60.0%", "a\nb\nc"],
            ["2026-06-01 11:00:00", "M", "BUY_YES", "ten", "TAKER", "0.5", "60.0%", ""],
        ],
    )
    result = load_trade_log(path)

    assert result.problems == [RowProblem(5, "column 'Size': 'ten' is not a number")]


# ---------------------------------------------------------------------------
# Synthetic Kalshi logs.


def test_kalshi_malformed_rows_skipped(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        "trades.csv",
        [
            KALSHI_HEADER,
            KALSHI_WIN,
            "KXBTC15M-26JUL271400-00,yes,10,96,1785174000,100",
            "KXBTC15M-26JUL271415-15,yes,ten,96,1785174900,100,1785175000,settlement,0.03,0.37",
            "",
            KALSHI_LOSS,
        ],
    )
    result = load_trade_log(path)

    assert [problem.line for problem in result.problems] == [3, 4]
    assert "expected 10 fields" in result.problems[0].reason
    assert "found 6" in result.problems[0].reason
    assert "'contracts'" in result.problems[1].reason
    assert "'ten'" in result.problems[1].reason
    assert [message.trade_id for message in of_type(result, TradeResolved)] == [
        "kalshi:KXBTC15M-26JUL271245-45",
        "kalshi:KXBTC15M-26JUL271330-30",
    ]
    assert total_pnl(result) == Decimal("-9.17")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("contracts", "NaN"),
        ("contracts", "Infinity"),
        ("contracts", "1_000"),
        ("contracts", "0x10"),
        ("contracts", "\u0661\u0660"),
        ("fees", "$0.03"),
        ("fees", "3%"),
        ("pnl", '"0,37"'),
        ("pnl", ""),
        ("entry_ts", "2026-07-27"),
        ("entry_price", "96c"),
    ],
)
def test_kalshi_garbage_number(tmp_path: Path, column: str, value: str) -> None:
    fields = dict(zip(KALSHI_HEADER.split(","), KALSHI_WIN.split(","), strict=True))
    fields[column] = value
    lines = [KALSHI_HEADER, ",".join(fields.values()), KALSHI_LOSS]
    path = write_text(tmp_path, "trades.csv", lines)
    result = load_trade_log(path)

    assert [problem.line for problem in result.problems] == [2]
    assert column in result.problems[0].reason
    assert len(of_type(result, TradeOpened)) == 1


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("entry_price", "0", "above 0"),
        ("entry_price", "150", "at most 100"),
        ("exit_price", "101", "between 0 and 100"),
        ("side", "long", "yes or no"),
        ("ticker", " ", "ticker"),
        ("entry_ts", "0", "year must lie between"),
        ("contracts", "-10", "greater than 0"),
        ("fees", "-0.01", "at least 0"),
        ("exit_ts", "1785170000", "before it was opened"),
        ("exit_ts", "", "exit_ts"),
    ],
)
def test_kalshi_invalid_value(tmp_path: Path, column: str, value: str, fragment: str) -> None:
    fields = dict(zip(KALSHI_HEADER.split(","), KALSHI_WIN.split(","), strict=True))
    fields[column] = value
    path = write_text(tmp_path, "trades.csv", [KALSHI_HEADER, ",".join(fields.values())])
    result = load_trade_log(path)

    assert result.messages == []
    assert len(result.problems) == 1
    assert fragment in result.problems[0].reason


def test_kalshi_open_trade(tmp_path: Path) -> None:
    row = "KXBTC15M-26JUL271245-45,no,10,95,1785170216,,,,0.04,"
    path = write_text(tmp_path, "trades.csv", [KALSHI_HEADER, row])
    result = load_trade_log(path)

    assert result.problems == []
    assert [type(message) for message in result.messages] == [TradeOpened]


def test_kalshi_duplicate_ticker(tmp_path: Path) -> None:
    path = write_text(tmp_path, "trades.csv", [KALSHI_HEADER, KALSHI_WIN, KALSHI_WIN])
    result = load_trade_log(path)

    assert [problem.line for problem in result.problems] == [3]
    assert "first seen on line 2" in result.problems[0].reason
    assert len(of_type(result, TradeOpened)) == 1


def test_kalshi_strategy_argument(tmp_path: Path) -> None:
    path = write_text(tmp_path, "trades.csv", [KALSHI_HEADER, KALSHI_WIN])

    assert of_type(load_trade_log(path), TradeOpened)[0].strategy == "default"
    opened = of_type(load_trade_log(path, strategy="btc-15m"), TradeOpened)[0]
    assert opened.strategy == "btc-15m"


def test_kalshi_header_any_order(tmp_path: Path) -> None:
    names = KALSHI_HEADER.split(",")
    values = dict(zip(names, KALSHI_WIN.split(","), strict=True))
    reordered = list(reversed(names))
    lines = ["\ufeff" + ",".join(reordered), ",".join(values[name] for name in reordered)]
    path = write_text(tmp_path, "trades.csv", lines)
    result = load_trade_log(path)

    assert result.format == "kalshi"
    assert result.problems == []
    assert total_pnl(result) == Decimal("0.37")


# ---------------------------------------------------------------------------
# Synthetic freqtrade results.


def test_freqtrade_synthetic_trades(tmp_path: Path) -> None:
    trades = [
        freqtrade_trade(),
        freqtrade_trade(pair=..., open_timestamp=1704200000000),
        freqtrade_trade(amount=-1, open_timestamp=1704300000000),
        "not a trade",
        freqtrade_trade(
            open_timestamp=1704400000000,
            is_short=True,
            enter_tag="rsi_low",
            is_open=True,
            close_date=None,
            fee_open=...,
        ),
        freqtrade_trade(),
        freqtrade_trade(open_timestamp=1704500000000, amount="HUGE"),
    ]
    path = write_freqtrade(tmp_path, trades, exchange={"name": "bybit"})
    # json.dumps cannot write this number, which would overflow a Decimal product.
    path.write_text(path.read_text().replace('"HUGE"', "1e999999"))
    result = load_trade_log(path)
    opened = {message.trade_id: message for message in of_type(result, TradeOpened)}
    resolved = {message.trade_id: message for message in of_type(result, TradeResolved)}

    assert [problem.line for problem in result.problems] == [2, 3, 4, 6, 7]
    assert "'pair'" in result.problems[0].reason
    assert "size" in result.problems[1].reason
    assert "JSON object" in result.problems[2].reason
    assert "duplicate trade id" in result.problems[3].reason
    assert "magnitude above" in result.problems[4].reason
    assert all(problem.reason.startswith("strategy MeanRev, trade ") for problem in result.problems)

    first = opened["LTC/USDT:USDT:1704168000000"]
    assert first.venue == "bybit"
    assert first.side == "long"
    assert first.fees == Decimal("0.001") * 2 * Decimal("70.5")
    assert resolved[first.trade_id].pnl == Decimal("3.857")
    assert resolved[first.trade_id].fees == Decimal("0.001") * 2 * Decimal("72.5")
    assert resolved[first.trade_id].outcome is None

    still_open = opened["LTC/USDT:USDT:1704400000000"]
    assert still_open.side == "short"
    assert still_open.tags == ("rsi_low",)
    assert still_open.fees == Decimal(0)
    assert still_open.trade_id not in resolved


def test_freqtrade_several_strategies(tmp_path: Path) -> None:
    document = {
        "strategy": {
            "A": {"trades": [freqtrade_trade()]},
            "B": {"trades": [freqtrade_trade()]},
        }
    }
    path = tmp_path / "backtest-result.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    result = load_trade_log(path)

    assert result.problems == []
    assert sorted(message.trade_id for message in of_type(result, TradeOpened)) == [
        "A:LTC/USDT:USDT:1704168000000",
        "B:LTC/USDT:USDT:1704168000000",
    ]
    assert {message.strategy for message in of_type(result, TradeOpened)} == {"A", "B"}


def test_freqtrade_strategy_argument(tmp_path: Path) -> None:
    path = write_freqtrade(tmp_path, [freqtrade_trade()])
    result = load_trade_log(path, strategy="meanrev-v2")

    assert of_type(result, TradeOpened)[0].strategy == "meanrev-v2"


# ---------------------------------------------------------------------------
# Whole-file errors and detection.


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"

    with pytest.raises(TradeLogError, match="not found") as caught:
        load_trade_log(path)
    assert str(path) in str(caught.value)
    with pytest.raises(TradeLogError, match=re.escape(str(path))):
        detect_format(path)


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TradeLogError, match="is a directory"):
        load_trade_log(tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("trades.csv", "date,symbol,qty\n2026-01-01,BTC,1\n"),
        ("result.json", '{"strategy": {"A": {"no_trades": []}}}'),
        ("list.json", "[1, 2]"),
        ("empty.csv", ""),
    ],
)
def test_unknown_format_raises(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")

    with pytest.raises(TradeLogError) as caught:
        load_trade_log(path)
    message = str(caught.value)
    assert str(path) in message
    for format_name in FORMATS:
        assert format_name in message


def test_invalid_json_raises(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text('{"strategy": {', encoding="utf-8")

    with pytest.raises(TradeLogError, match="not valid JSON"):
        load_trade_log(path)


def test_not_utf8_raises(tmp_path: Path) -> None:
    path = tmp_path / "trades.csv"
    path.write_bytes(KALSHI_HEADER.encode() + b"\n\xff\xfe\n")

    with pytest.raises(TradeLogError, match="not UTF-8"):
        load_trade_log(path)


def test_format_argument_checked(tmp_path: Path) -> None:
    path = write_text(tmp_path, "trades.csv", [KALSHI_HEADER, KALSHI_WIN])

    with pytest.raises(TradeLogError, match="lacks the columns Timestamp"):
        load_trade_log(path, format="polymarket")
    with pytest.raises(TradeLogError, match="not valid JSON"):
        load_trade_log(path, format="freqtrade")
    listing = tmp_path / "list.json"
    listing.write_text("[]", encoding="utf-8")
    with pytest.raises(TradeLogError, match=r"no strategy\.<name>\.trades"):
        load_trade_log(listing, format="freqtrade")
    with pytest.raises(ValueError, match="unknown trade log format"):
        load_trade_log(path, format="csv")
    with pytest.raises(ValueError, match="strategy"):
        load_trade_log(path, strategy=" ")


def test_detect_synthetic_formats(tmp_path: Path) -> None:
    kalshi = write_text(tmp_path, "a.csv", [KALSHI_HEADER])
    polymarket = write_polymarket(tmp_path, [])
    freqtrade = write_freqtrade(tmp_path, [])

    assert detect_format(kalshi) == "kalshi"
    assert detect_format(polymarket) == "polymarket"
    assert detect_format(freqtrade) == "freqtrade"
    assert load_trade_log(kalshi).messages == []


def test_event_time_per_type() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    messages = [
        Decision("d1", at, "s", "m", "hold"),
        TradeOpened("t1", "v", "m", "long", Decimal(1), Decimal(1), "s", at),
        TradeResolved("t1", at, Decimal(0)),
        TradeCancelled("t1", at),
    ]

    assert [event_time(message) for message in messages] == [at] * 4
