"""Messages that a trading bot sends to tradepulse, and their validation.

Every actor imports its message types from here. A message arrives as a JSON
object with a ``type`` field; ``parse_message`` turns it into one of the frozen
dataclasses below or raises ``InvalidMessage`` naming the field and the value.

Money and prices are ``Decimal`` so that sums of many small PnLs stay exact.
Times are timezone-aware ``datetime`` objects in UTC.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeAlias

# The largest magnitude accepted for a size, price, fee or PnL. Larger values are
# almost certainly unit mistakes (wei, satoshi) and would dominate every metric.
MAX_MAGNITUDE = Decimal("1e15")

# The smallest positive price or size accepted; below it a value is treated as a
# unit mistake too.
MIN_POSITIVE = Decimal("1e-12")

SIDES = frozenset({"long", "short", "buy", "sell", "yes", "no"})
OUTCOMES = frozenset({"win", "loss", "draw"})
DECISION_ACTIONS = frozenset({"trade", "hold"})

# A binary market pays 1 per share on a win, so its prices lie in [0, 1]. A
# linear market (spot, futures) has any positive price.
MARKET_KINDS = frozenset({"binary", "linear"})
LEGS = frozenset({"entry", "exit"})

MAX_TEXT_LENGTH = 500
MAX_TAGS = 32


def _json_number(value: Decimal) -> int | float | str:
    """Return a decimal as the JSON number that a bot sent, or as text when none is exact."""
    if not value.is_finite():
        return str(value)
    if value == value.to_integral_value() and abs(value) <= 10**15:
        return int(value)
    approximate = float(value)
    if math.isfinite(approximate) and Decimal(repr(approximate)) == value:
        return approximate
    return str(value)


class InvalidMessage(ValueError):
    """A message from the bot that fails validation.

    ``field`` is the dotted name of the offending field and ``value`` its
    value as received, so that the bot can log exactly what it sent wrong.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = str(value) if isinstance(value, Decimal) else repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid field {field!r}: {shown} ({reason})")

    def to_dict(self) -> dict[str, Any]:
        """Describe the error as JSON, with the value cut to 200 characters.

        A parse error carries the value as sent. A check against the stored
        trade carries the parsed decimal: a JSON number where one is exact,
        else its text.
        """
        value = self.value
        if isinstance(value, Decimal):
            value = _json_number(value)
        elif isinstance(value, float) and not math.isfinite(value):
            value = repr(value)
        elif not isinstance(value, str | int | float | bool | type(None)):
            value = repr(value)
        if isinstance(value, str) and len(value) > 200:
            value = value[:197] + "..."
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
            value = str(value)[:40]
        return {"error": str(self), "field": self.field, "value": value, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision of the bot: to trade, or to HOLD instead of trading."""

    decision_id: str
    decided_at: datetime
    strategy: str
    market: str
    action: Literal["trade", "hold"]
    venue: str | None = None
    side: str | None = None
    confidence: Decimal | None = None
    probability: Decimal | None = None
    signal_type: str | None = None
    tags: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    trade_id: str | None = None

    @property
    def key(self) -> str:
        return self.decision_id


@dataclass(frozen=True, slots=True)
class TradeOpened:
    """A trade that the bot opened. ``size`` is in contracts, shares or coins."""

    trade_id: str
    venue: str
    market: str
    side: str
    size: Decimal
    entry_price: Decimal
    strategy: str
    opened_at: datetime
    fees: Decimal = Decimal(0)
    market_kind: Literal["binary", "linear"] = "linear"
    probability: Decimal | None = None
    signal_type: str | None = None
    tags: tuple[str, ...] = ()
    # The price the bot expected to pay and the size it asked for, for
    # slippage and fill rate.
    expected_price: Decimal | None = None
    requested_size: Decimal | None = None

    @property
    def key(self) -> str:
        return self.trade_id


@dataclass(frozen=True, slots=True)
class TradeMarked:
    """The current price of an open position, for marking it to market."""

    trade_id: str
    price: Decimal
    marked_at: datetime

    @property
    def key(self) -> str:
        return self.trade_id


@dataclass(frozen=True, slots=True)
class TradeFill:
    """One more fill of a position: a further entry into it, or a partial exit.

    ``leg`` is ``entry`` for a fill that adds to the position (another fill
    of the same order, or a later buy) and ``exit`` for one that reduces it.
    A fill is known by (``trade_id``, ``fill_id``); sending it again changes
    nothing, and sending other values under the same id corrects it.
    """

    trade_id: str
    fill_id: str
    leg: Literal["entry", "exit"]
    size: Decimal
    price: Decimal
    filled_at: datetime
    fees: Decimal = Decimal(0)

    @property
    def key(self) -> str:
        return self.trade_id


@dataclass(frozen=True, slots=True)
class TradeResolved:
    """The end of a trade, with its PnL net of all fees.

    ``pnl`` is the whole position's: it includes what partial exits
    (``TradeFill`` with leg ``exit``) realized before the end.
    """

    trade_id: str
    resolved_at: datetime
    pnl: Decimal
    exit_price: Decimal | None = None
    outcome: Literal["win", "loss", "draw"] | None = None
    fees: Decimal = Decimal(0)

    @property
    def key(self) -> str:
        return self.trade_id


@dataclass(frozen=True, slots=True)
class TradeCancelled:
    """A trade that ended without a fill or was withdrawn; it has no PnL."""

    trade_id: str
    cancelled_at: datetime
    reason: str | None = None

    @property
    def key(self) -> str:
        return self.trade_id


Message: TypeAlias = (
    Decision | TradeOpened | TradeResolved | TradeCancelled | TradeMarked | TradeFill
)
TradeMessage: TypeAlias = TradeOpened | TradeResolved | TradeCancelled | TradeMarked | TradeFill

MESSAGE_TYPES: dict[str, type[Message]] = {
    "decision": Decision,
    "trade_opened": TradeOpened,
    "trade_resolved": TradeResolved,
    "trade_cancelled": TradeCancelled,
    "trade_marked": TradeMarked,
    "trade_fill": TradeFill,
}
TYPE_NAMES: dict[type[Message], str] = {cls: name for name, cls in MESSAGE_TYPES.items()}


# ---------------------------------------------------------------------------
# Field parsers. Each takes the field name so that its error can name it.


def _text(data: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidMessage(name, value, "required field is missing")
        return None
    if not isinstance(value, str):
        raise InvalidMessage(name, value, "must be a string")
    value = value.strip()
    if not value:
        if required:
            raise InvalidMessage(name, data.get(name), "must not be empty")
        return None
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidMessage(name, value, f"longer than {MAX_TEXT_LENGTH} characters")
    _check_characters(name, value)
    return value


# C0 and C1 control characters, DEL included. A newline in a market name would
# forge a log line, and terminal escapes would reach an operator's screen.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_characters(name: str, value: str) -> None:
    if _CONTROL.search(value):
        raise InvalidMessage(name, value, "contains a control character such as a newline")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON "\ud800") cannot be stored as UTF-8 text.
        raise InvalidMessage(name, value, "contains a character that is not valid Unicode") from None


def _required_text(data: Mapping[str, Any], name: str) -> str:
    value = _text(data, name)
    assert value is not None
    return value


# A plain decimal number as text; Decimal() alone would also take "1_0" and "NaN".
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _decimal(
    data: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
    minimum: Decimal | None = None,
    maximum: Decimal | None = None,
    positive: bool = False,
) -> Decimal | None:
    raw = data.get(name)
    if raw is None:
        if required:
            raise InvalidMessage(name, raw, "required field is missing")
        return None
    if isinstance(raw, bool):
        raise InvalidMessage(name, raw, "must be a number")
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            raise InvalidMessage(name, raw, "must be a finite number")
        # str() gives the shortest decimal that round-trips, so 0.1 stays 0.1.
        value = Decimal(str(raw))
    elif isinstance(raw, str):
        if not _NUMBER.fullmatch(raw.strip()):
            raise InvalidMessage(name, raw, "must be a number such as 12.5 or 1.25e-3")
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            raise InvalidMessage(name, raw, "must be a number") from None
    else:
        raise InvalidMessage(name, raw, "must be a number")

    if not value.is_finite():
        raise InvalidMessage(name, raw, "must be a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise InvalidMessage(name, raw, f"magnitude above {MAX_MAGNITUDE:.0E}")
    if value and abs(value) < MIN_POSITIVE:
        raise InvalidMessage(name, raw, f"nonzero magnitude below {MIN_POSITIVE:.0E}")
    if positive and value <= 0:
        raise InvalidMessage(name, raw, "must be greater than 0")
    if positive and value < MIN_POSITIVE:
        raise InvalidMessage(name, raw, f"below the smallest accepted value {MIN_POSITIVE:.0E}")
    if minimum is not None and value < minimum:
        raise InvalidMessage(name, raw, f"must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidMessage(name, raw, f"must be at most {maximum}")
    # Normalize -0 to 0 so that equal amounts compare and print alike.
    return value + 0 if value.is_zero() else value


def _from_epoch(name: str, raw: int | float | Decimal) -> datetime:
    try:
        seconds = float(raw)
    except (OverflowError, ValueError):
        raise InvalidMessage(name, raw, "epoch seconds out of range") from None
    if not math.isfinite(seconds):
        raise InvalidMessage(name, raw, "must be a finite number of seconds")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidMessage(name, raw, "epoch seconds out of range") from None


def _time(data: Mapping[str, Any], name: str) -> datetime:
    raw = data.get(name)
    if raw is None:
        raise InvalidMessage(name, raw, "required field is missing")
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, int | float | Decimal) and not isinstance(raw, bool):
        value = _from_epoch(name, raw)
    elif isinstance(raw, str) and _NUMBER.fullmatch(raw.strip()):
        value = _from_epoch(name, Decimal(raw.strip()))
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise InvalidMessage(
                name, raw, "must be an ISO 8601 time such as 2026-07-27T16:36:56Z"
            ) from None
    else:
        raise InvalidMessage(name, raw, "must be an ISO 8601 string or epoch seconds")

    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidMessage(name, raw, "time has no timezone; add Z or an offset such as +00:00")
    value = value.astimezone(UTC)
    if not 2000 <= value.year <= 2200:
        raise InvalidMessage(name, raw, "year must lie between 2000 and 2200")
    return value


def _choice(
    data: Mapping[str, Any], name: str, choices: frozenset[str], *, required: bool = True
) -> str | None:
    value = _text(data, name, required=required)
    if value is None:
        return None
    lowered = value.lower()
    if lowered not in choices:
        raise InvalidMessage(name, data.get(name), f"must be one of {', '.join(sorted(choices))}")
    return lowered


def _tags(data: Mapping[str, Any]) -> tuple[str, ...]:
    raw = data.get("tags")
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise InvalidMessage("tags", raw, "must be a list of strings")
    if len(raw) > MAX_TAGS:
        raise InvalidMessage("tags", raw, f"more than {MAX_TAGS} tags")
    tags: list[str] = []
    for index, tag in enumerate(raw):
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidMessage(f"tags[{index}]", tag, "must be a non-empty string")
        if len(tag) > MAX_TEXT_LENGTH:
            raise InvalidMessage(f"tags[{index}]", tag, f"longer than {MAX_TEXT_LENGTH} characters")
        _check_characters(f"tags[{index}]", tag)
        tags.append(tag.strip())
    return tuple(dict.fromkeys(tags))


def _params(data: Mapping[str, Any]) -> dict[str, Any]:
    raw = data.get("params")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidMessage("params", raw, "must be an object of parameter names to values")
    try:
        # Round-trip through JSON to reject NaN and anything that cannot be stored.
        encoded = json.dumps(raw, allow_nan=False, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise InvalidMessage("params", raw, f"not JSON-serializable: {error}") from None
    if len(encoded) > 20_000:
        raise InvalidMessage("params", "<object>", "larger than 20000 characters as JSON")
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage("params", "<object>", "contains a character that is not valid Unicode") from None
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def _probability(data: Mapping[str, Any], name: str) -> Decimal | None:
    return _decimal(data, name, required=False, minimum=Decimal(0), maximum=Decimal(1))


# ---------------------------------------------------------------------------
# Message parsers.


def _parse_decision(data: Mapping[str, Any]) -> Decision:
    decided_at = _time(data, "decided_at")
    strategy = _required_text(data, "strategy")
    market = _required_text(data, "market")
    action = _choice(data, "action", DECISION_ACTIONS)
    assert action == "trade" or action == "hold"
    venue = _text(data, "venue", required=False)
    side = _choice(data, "side", SIDES, required=False)
    confidence = _probability(data, "confidence")
    probability = _probability(data, "probability")
    signal_type = _text(data, "signal_type", required=False)
    tags = _tags(data)
    params = _params(data)
    trade_id = _text(data, "trade_id", required=False)

    decision_id = _text(data, "decision_id", required=False)
    if decision_id is None:
        # A bot that sends no id still gets idempotent storage: the same
        # decision sent twice hashes to the same id.
        canonical = json.dumps(
            [
                decided_at.isoformat(),
                strategy,
                market,
                action,
                venue,
                side,
                trade_id,
                None if confidence is None else str(confidence),
                None if probability is None else str(probability),
                signal_type,
                list(tags),
                params,
            ],
            separators=(",", ":"),
            sort_keys=True,
        )
        decision_id = "d-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]

    return Decision(
        decision_id=decision_id,
        decided_at=decided_at,
        strategy=strategy,
        market=market,
        action=action,
        venue=venue,
        side=side,
        confidence=confidence,
        probability=probability,
        signal_type=signal_type,
        tags=tags,
        params=params,
        trade_id=trade_id,
    )


def _parse_opened(data: Mapping[str, Any]) -> TradeOpened:
    market_kind = _choice(data, "market_kind", MARKET_KINDS, required=False) or "linear"
    assert market_kind == "binary" or market_kind == "linear"
    entry_price = _decimal(data, "entry_price", positive=True)
    assert entry_price is not None
    if market_kind == "binary" and entry_price > 1:
        raise InvalidMessage(
            "entry_price",
            data.get("entry_price"),
            "a binary market's price lies in (0, 1]; convert cents to dollars",
        )
    size = _decimal(data, "size", positive=True)
    fees = _decimal(data, "fees", required=False, minimum=Decimal(0))
    assert size is not None
    expected_price = _decimal(data, "expected_price", required=False, positive=True)
    if market_kind == "binary" and expected_price is not None and expected_price > 1:
        raise InvalidMessage(
            "expected_price",
            data.get("expected_price"),
            "a binary market's price lies in (0, 1]; convert cents to dollars",
        )
    return TradeOpened(
        trade_id=_required_text(data, "trade_id"),
        venue=_required_text(data, "venue"),
        market=_required_text(data, "market"),
        side=_choice(data, "side", SIDES) or "",
        size=size,
        entry_price=entry_price,
        strategy=_required_text(data, "strategy"),
        opened_at=_time(data, "opened_at"),
        fees=fees if fees is not None else Decimal(0),
        market_kind=market_kind,
        probability=_probability(data, "probability"),
        signal_type=_text(data, "signal_type", required=False),
        tags=_tags(data),
        expected_price=expected_price,
        requested_size=_decimal(data, "requested_size", required=False, positive=True),
    )


def _parse_marked(data: Mapping[str, Any]) -> TradeMarked:
    price = _decimal(data, "price", minimum=Decimal(0))
    assert price is not None
    return TradeMarked(
        trade_id=_required_text(data, "trade_id"),
        price=price,
        marked_at=_time(data, "marked_at"),
    )


def _parse_fill(data: Mapping[str, Any]) -> TradeFill:
    leg = _choice(data, "leg", LEGS)
    assert leg == "entry" or leg == "exit"
    size = _decimal(data, "size", positive=True)
    # An exit may realize nothing (a binary share settled at 0); an entry
    # always costs something.
    price = _decimal(data, "price", positive=leg == "entry", minimum=Decimal(0))
    fees = _decimal(data, "fees", required=False, minimum=Decimal(0))
    assert size is not None and price is not None
    return TradeFill(
        trade_id=_required_text(data, "trade_id"),
        fill_id=_required_text(data, "fill_id"),
        leg=leg,
        size=size,
        price=price,
        filled_at=_time(data, "filled_at"),
        fees=fees if fees is not None else Decimal(0),
    )


def _parse_resolved(data: Mapping[str, Any]) -> TradeResolved:
    pnl = _decimal(data, "pnl")
    assert pnl is not None
    exit_price = _decimal(data, "exit_price", required=False, minimum=Decimal(0))
    outcome = _choice(data, "outcome", OUTCOMES, required=False)
    assert outcome is None or outcome in OUTCOMES
    fees = _decimal(data, "fees", required=False, minimum=Decimal(0))
    if (outcome == "win" and pnl < 0) or (outcome == "loss" and pnl > 0):
        raise InvalidMessage(
            "outcome", data.get("outcome"), f"contradicts pnl {pnl}; omit outcome to derive it"
        )
    return TradeResolved(
        trade_id=_required_text(data, "trade_id"),
        resolved_at=_time(data, "resolved_at"),
        pnl=pnl,
        exit_price=exit_price,
        outcome=outcome,  # type: ignore[arg-type]
        fees=fees if fees is not None else Decimal(0),
    )


def _parse_cancelled(data: Mapping[str, Any]) -> TradeCancelled:
    return TradeCancelled(
        trade_id=_required_text(data, "trade_id"),
        cancelled_at=_time(data, "cancelled_at"),
        reason=_text(data, "reason", required=False),
    )


_PARSERS = {
    "decision": _parse_decision,
    "trade_opened": _parse_opened,
    "trade_resolved": _parse_resolved,
    "trade_cancelled": _parse_cancelled,
    "trade_marked": _parse_marked,
    "trade_fill": _parse_fill,
}


# Fields a message may carry besides its own: ``type`` and ``ref``, a
# correlation value that the bot chooses and the ingest reply echoes.
_FIELD_NAMES = {
    name: frozenset(cls.__dataclass_fields__) | {"type", "ref"}
    for name, cls in MESSAGE_TYPES.items()
}


def parse_message(data: Any) -> Message:
    """Validate one message from the bot and return it as a typed message.

    Raises ``InvalidMessage`` on the first field that fails, naming it.
    """
    if not isinstance(data, Mapping):
        raise InvalidMessage("<message>", data, "a message must be a JSON object")
    kind = data.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise InvalidMessage("type", kind, f"must be one of {', '.join(sorted(_PARSERS))}")

    # An unknown field is most likely a misspelt optional one ("fee" for
    # "fees"); ignoring it would store the trade without the value.
    known = _FIELD_NAMES[kind]
    for name in data:
        if name not in known:
            raise InvalidMessage(name, data[name], f"unknown field for a {kind} message")
    return parser(data)


# ---------------------------------------------------------------------------
# Encoding for storage, the journal and the wire.


def format_time(value: datetime) -> str:
    """Format a UTC time so that text order equals time order."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def message_to_dict(message: Message) -> dict[str, Any]:
    """Encode a message as the JSON object that ``parse_message`` accepts."""
    encoded: dict[str, Any] = {"type": TYPE_NAMES[type(message)]}
    for name in message.__dataclass_fields__:
        value = getattr(message, name)
        if value is None or value == () or (name == "params" and not value):
            continue
        if isinstance(value, Decimal):
            encoded[name] = str(value)
        elif isinstance(value, datetime):
            encoded[name] = format_time(value)
        elif isinstance(value, tuple):
            encoded[name] = list(value)
        elif isinstance(value, Mapping):
            encoded[name] = dict(value)
        else:
            encoded[name] = value
    return encoded


def dumps(value: Any) -> str:
    """Encode to compact JSON, with Decimals and datetimes as strings and no NaN."""
    return json.dumps(value, default=_json_default, allow_nan=False, separators=(",", ":"))
