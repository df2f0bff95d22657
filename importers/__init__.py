"""Import finished trade logs that bots wrote before tradepulse ran beside them.

``load_trade_log`` reads one file, detects its format from the content unless
the caller names it, and returns the messages that a live bot would have sent for the same
trades. Every message goes through ``parse_message``, so an imported trade is
validated exactly like live input. A row that fails becomes a ``RowProblem``
and is skipped while the rest of the file is imported. A problem with the
whole file (missing, unreadable, unknown format) raises ``TradeLogError``.

The returned messages are sorted by ``event_time`` with a stable sort, so
replaying them in order is chronological and keeps the file's order for
messages with equal times.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from actors.messages import (
    MAX_MAGNITUDE,
    MIN_POSITIVE,
    Decision,
    Message,
    TradeCancelled,
    TradeFill,
    TradeMarked,
    TradeOpened,
    TradeResolved,
)

FORMATS = ("freqtrade", "kalshi", "polymarket")

# The strategy name given to trades from formats whose files name none.
DEFAULT_STRATEGY = "default"


class TradeLogError(Exception):
    """A trade log that cannot be imported at all, as opposed to one bad row."""


class RowError(ValueError):
    """A row that cannot be converted, raised by the format modules to skip the row."""


@dataclass(frozen=True)
class RowProblem:
    """A skipped row and why it was skipped.

    ``line`` is the 1-based line in a CSV file, where the header is line 1 and
    a row that spans several lines is reported at its first line. For a
    freqtrade backtest JSON file it is the 1-based position of the trade in
    its strategy's ``trades`` list, because JSON offers no stable line.
    """

    line: int
    reason: str


@dataclass
class ImportResult:
    """The messages read from one trade log and the rows that were skipped."""

    format: str
    messages: list[Message] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


def event_time(message: Message) -> datetime:
    """Return the time at which the message's event happened."""
    if isinstance(message, Decision):
        return message.decided_at
    if isinstance(message, TradeOpened):
        return message.opened_at
    if isinstance(message, TradeResolved):
        return message.resolved_at
    if isinstance(message, TradeCancelled):
        return message.cancelled_at
    if isinstance(message, TradeMarked):
        return message.marked_at
    if isinstance(message, TradeFill):
        return message.filled_at
    raise TypeError(f"not a tradepulse message: {message!r}")


# ---------------------------------------------------------------------------
# Helpers shared by the format modules.

# A plain decimal number in ASCII. Decimal() alone would also accept "NaN",
# "Infinity", "1_000" and non-ASCII digits, none of which a trade log means.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_number(text: str, column: str) -> Decimal:
    """Parse a CSV field as an exact Decimal, or raise ``RowError`` naming the column.

    The magnitude limits are those of message validation. Checking them here
    also keeps the arithmetic before validation clear of decimal overflow.
    """
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        raise RowError(f"column {column!r}: {text!r} is not a number")
    value = Decimal(stripped)
    if abs(value) > MAX_MAGNITUDE:
        raise RowError(f"column {column!r}: {text!r} has a magnitude above {MAX_MAGNITUDE:.0E}")
    if value and abs(value) < MIN_POSITIVE:
        raise RowError(
            f"column {column!r}: {text!r} is below the smallest accepted value {MIN_POSITIVE:.0E}"
        )
    return value


def parse_epoch_seconds(text: str, column: str) -> int | float:
    """Parse epoch seconds in the form that ``parse_message`` accepts for a time."""
    value = parse_number(text, column)
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def check_trade_times(opened: Message, resolved: Message) -> None:
    """Raise ``RowError`` when a trade would end before it began."""
    if isinstance(opened, TradeOpened) and isinstance(resolved, TradeResolved):
        if resolved.resolved_at < opened.opened_at:
            raise RowError(
                f"resolved at {resolved.resolved_at.isoformat()}, "
                f"before it was opened at {opened.opened_at.isoformat()}"
            )


@dataclass(frozen=True)
class CsvRecord:
    """One CSV row with its fields by header name and its first line in the file."""

    line: int
    fields: dict[str, str]


def read_csv_records(
    text: str, path: Path, format_name: str, required: tuple[str, ...]
) -> tuple[list[CsvRecord], list[RowProblem]]:
    """Split a CSV trade log into records, reporting rows of the wrong width.

    Blank lines are skipped without a problem. Raises ``TradeLogError`` when the
    header lacks a required column, because then no row can be read.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[CsvRecord] = []
    problems: list[RowProblem] = []
    header: list[str] | None = None
    end_of_previous_row = 0
    try:
        for row in reader:
            line = end_of_previous_row + 1
            end_of_previous_row = reader.line_num
            if not row or all(not value.strip() for value in row):
                continue
            if header is None:
                header = [name.strip() for name in row]
                _check_header(header, path, format_name, required)
                continue
            if len(row) != len(header):
                reason = f"expected {len(header)} fields as in the header, found {len(row)}"
                problems.append(RowProblem(line, reason))
                continue
            records.append(CsvRecord(line, dict(zip(header, row, strict=True))))
    except csv.Error as error:
        raise TradeLogError(
            f"{path} is not valid CSV near line {reader.line_num}: {error}; "
            "fix or remove that line and import again"
        ) from None
    if header is None:
        raise TradeLogError(f"{path} is empty; expected a {format_name} CSV with a header row")
    return records, problems


def _check_header(
    header: list[str], path: Path, format_name: str, required: tuple[str, ...]
) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        raise TradeLogError(
            f"{path} is not a {format_name} trade log: its header lacks the columns "
            f"{', '.join(missing)}; pass the right format or omit it to detect the format"
        )


def read_csv_header(text: str) -> list[str]:
    """Return the stripped names of the first non-blank CSV row, or [] when there is none."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if row and any(value.strip() for value in row):
                return [name.strip() for name in row]
    except csv.Error:
        return []
    return []


# The format modules import the shared types above from this package, so they
# are imported only after those are defined.
from importers import freqtrade, kalshi, polymarket  # noqa: E402


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TradeLogError(f"trade log {path} not found; check the path") from None
    except IsADirectoryError:
        raise TradeLogError(
            f"trade log {path} is a directory; pass the log file inside it"
        ) from None
    except OSError as error:
        raise TradeLogError(
            f"cannot read trade log {path}: {error.strerror or error}; check its permissions"
        ) from None
    try:
        # utf-8-sig drops the byte order mark that spreadsheet programs write.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TradeLogError(
            f"trade log {path} is not UTF-8 text (invalid byte at offset {error.start}); "
            "convert it to UTF-8 and import again"
        ) from None


def _parse_json(text: str, path: Path) -> Any:
    try:
        # Decimal for every JSON number with a fraction, so that money stays exact.
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as error:
        raise TradeLogError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "a freqtrade backtest result must be the unmodified JSON file"
        ) from None


def _looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


def _detect(text: str, path: Path) -> str:
    if _looks_like_json(text):
        if freqtrade.is_backtest_result(_parse_json(text, path)):
            return "freqtrade"
    else:
        header = read_csv_header(text)
        for name, module in (("kalshi", kalshi), ("polymarket", polymarket)):
            if all(column in header for column in module.REQUIRED_COLUMNS):
                return name
    raise TradeLogError(
        f"cannot detect the format of {path}: expected a freqtrade backtest JSON "
        "with strategy.<name>.trades, or a CSV with the kalshi or polymarket header; "
        f"pass format= one of {', '.join(FORMATS)} if the file is one of them"
    )


def detect_format(path: Path) -> str:
    """Detect a trade log's format from its content, one of ``FORMATS``.

    Raises ``TradeLogError`` naming the path when the file is missing,
    unreadable or in none of the known formats.
    """
    return _detect(_read_text(path), path)


def load_trade_log(
    path: Path, format: str | None = None, *, strategy: str | None = None
) -> ImportResult:
    """Read a trade log into validated messages, sorted by ``event_time``.

    ``format`` is one of ``FORMATS`` and detected from the content when None.
    ``strategy`` names the strategy of every trade. Without it, Kalshi and
    Polymarket trades get ``DEFAULT_STRATEGY`` and freqtrade trades keep the
    strategy names in the file. Raises ``TradeLogError`` for a file that cannot
    be imported at all, and ``ValueError`` for an unknown ``format`` or a blank
    ``strategy``.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(
            f"unknown trade log format {format!r}; expected one of {', '.join(FORMATS)}"
        )
    if strategy is not None and not strategy.strip():
        raise ValueError("strategy must be a non-empty name, or None")

    path = Path(path)
    text = _read_text(path)
    if format is None:
        format = _detect(text, path)

    if format == "freqtrade":
        document = _parse_json(text, path)
        messages, problems = freqtrade.read_backtest(document, path, strategy=strategy)
    elif format == "kalshi":
        strategy = strategy or DEFAULT_STRATEGY
        messages, problems = kalshi.read_trades(text, path, strategy=strategy)
    else:
        strategy = strategy or DEFAULT_STRATEGY
        messages, problems = polymarket.read_fills(text, path, strategy=strategy)

    # list.sort is stable, so messages with equal times keep the order in which
    # the format module emitted them, such as an opening before its resolution.
    messages.sort(key=event_time)
    return ImportResult(format=format, messages=messages, problems=problems)


__all__ = [
    "DEFAULT_STRATEGY",
    "FORMATS",
    "ImportResult",
    "RowProblem",
    "TradeLogError",
    "detect_format",
    "event_time",
    "load_trade_log",
]
