"""Import a freqtrade backtest result, the JSON file that ``freqtrade backtesting`` writes.

Every trade in ``strategy.<name>.trades`` becomes a ``TradeOpened`` and, unless
freqtrade marks it ``is_open``, a ``TradeResolved``. The PnL is freqtrade's
``profit_abs`` in the stake currency, net of the fees freqtrade charged. For
futures it can differ from the price move minus trading fees, presumably by
funding fees, which the result does not list. The resolution carries no
outcome, so tradepulse derives it from the sign of the PnL. Dates are
freqtrade's ``open_date`` and ``close_date`` strings, which carry a UTC offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from actors.messages import (
    MAX_MAGNITUDE,
    InvalidMessage,
    Message,
    TradeOpened,
    TradeResolved,
    parse_message,
)
from importers import RowError, RowProblem, TradeLogError, check_trade_times

# The venue of a trade when the result does not name its exchange.
DEFAULT_VENUE = "freqtrade"


def is_backtest_result(document: Any) -> bool:
    """Return whether a parsed JSON document has the ``strategy.<name>.trades`` lists."""
    if not isinstance(document, Mapping):
        return False
    strategies = document.get("strategy")
    if not isinstance(strategies, Mapping) or not strategies:
        return False
    return all(
        isinstance(data, Mapping) and isinstance(data.get("trades"), list)
        for data in strategies.values()
    )


def read_backtest(
    document: Any, path: Path, *, strategy: str | None = None
) -> tuple[list[Message], list[RowProblem]]:
    """Convert every trade of every strategy in a parsed backtest result.

    ``strategy`` replaces the strategy name of every trade when given. A
    problem's line is the trade's 1-based position in its strategy's list.
    """
    if not is_backtest_result(document):
        raise TradeLogError(
            f"{path} is not a freqtrade backtest result: it has no strategy.<name>.trades lists; "
            "pass the backtest-result-*.json file, not its .meta.json"
        )
    strategies: Mapping[str, Any] = document["strategy"]
    # Two strategies of one run can open the same pair at the same candle, so
    # their ids then include the strategy name to stay distinct.
    id_prefix_needed = len(strategies) > 1

    messages: list[Message] = []
    problems: list[RowProblem] = []
    for name, data in strategies.items():
        venue = _venue(data)
        first_number_of_id: dict[str, int] = {}
        for number, trade in enumerate(data["trades"], start=1):
            try:
                prefix = f"{name}:" if id_prefix_needed else ""
                opened, resolved = _convert_trade(trade, prefix, strategy or name, venue)
                earlier = first_number_of_id.get(opened.trade_id)
                if earlier is not None:
                    raise RowError(
                        f"duplicate trade id {opened.trade_id!r}, first seen at trade {earlier}"
                    )
            except (RowError, InvalidMessage) as error:
                problems.append(RowProblem(number, f"strategy {name}, trade {number}: {error}"))
                continue
            first_number_of_id[opened.trade_id] = number
            messages.append(opened)
            if resolved is not None:
                messages.append(resolved)
    return messages, problems


def _venue(data: Mapping[str, Any]) -> str:
    # A result may name the exchange as a string or as a config object with a
    # "name", but most results name none.
    exchange = data.get("exchange")
    if isinstance(exchange, Mapping):
        exchange = exchange.get("name")
    if isinstance(exchange, str) and exchange.strip():
        return exchange.strip()
    return DEFAULT_VENUE


def _convert_trade(
    trade: Any, id_prefix: str, strategy: str, venue: str
) -> tuple[TradeOpened, TradeResolved | None]:
    if not isinstance(trade, Mapping):
        raise RowError(f"expected a JSON object, found {type(trade).__name__}")
    pair = _required(trade, "pair")
    open_timestamp = _required(trade, "open_timestamp")
    trade_id = f"{id_prefix}{pair}:{open_timestamp}"
    is_short = trade.get("is_short", False)
    if not isinstance(is_short, bool):
        raise RowError(f"field 'is_short': {is_short!r} is not true or false")
    enter_tag = trade.get("enter_tag")

    opened = parse_message(
        {
            "type": "trade_opened",
            "trade_id": trade_id,
            "venue": venue,
            "market": pair,
            "side": "short" if is_short else "long",
            "size": trade.get("amount"),
            "entry_price": trade.get("open_rate"),
            "fees": _fee(trade, "fee_open", "open_rate"),
            "strategy": strategy,
            "opened_at": trade.get("open_date"),
            "market_kind": "linear",
            "tags": [enter_tag] if isinstance(enter_tag, str) and enter_tag.strip() else None,
        }
    )
    assert isinstance(opened, TradeOpened)
    if trade.get("is_open") is True:
        return opened, None

    resolved = parse_message(
        {
            "type": "trade_resolved",
            "trade_id": trade_id,
            "resolved_at": trade.get("close_date"),
            "pnl": trade.get("profit_abs"),
            "exit_price": trade.get("close_rate"),
            "fees": _fee(trade, "fee_close", "close_rate"),
        }
    )
    assert isinstance(resolved, TradeResolved)
    check_trade_times(opened, resolved)
    return opened, resolved


def _required(trade: Mapping[str, Any], name: str) -> Any:
    value = trade.get(name)
    if value is None or value == "":
        raise RowError(f"required field {name!r} is missing")
    return value


def _number(trade: Mapping[str, Any], name: str) -> Decimal | None:
    value = trade.get(name)
    if value is None:
        return None
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    else:
        raise RowError(f"field {name!r}: {value!r} is not a number")
    # A larger value would fail validation anyway, and it could overflow the
    # fee product first.
    if abs(number) > MAX_MAGNITUDE:
        raise RowError(f"field {name!r}: {value!r} has a magnitude above {MAX_MAGNITUDE:.0E}")
    return number


def _fee(trade: Mapping[str, Any], rate_name: str, price_name: str) -> Decimal:
    """Compute a fee in the stake currency the way freqtrade charges it.

    freqtrade charges the fee rate on the position's notional value, amount
    times price, not on ``stake_amount``, which is the margin and smaller by
    the leverage. A trade without the fee rate gets a fee of 0.
    """
    rate = _number(trade, rate_name)
    if rate is None:
        return Decimal(0)
    amount = _number(trade, "amount")
    price = _number(trade, price_name)
    if amount is None or price is None:
        return Decimal(0)
    return rate * amount * price
