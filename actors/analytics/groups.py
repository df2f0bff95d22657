"""Breakdowns of the metrics by a key: strategy, venue, market, tag, signal type.

``GroupTable`` keeps one ``Stats`` per key. A table may cap its number of
keys: once full, trades of any further key are summed in one ``OTHER`` row,
which bounds memory for keys without limit such as market tickers. A table
may also show only its busiest rows, kept as a small leaderboard so that a
snapshot does not sort every key.
"""

from __future__ import annotations

import heapq
from typing import Any

from actors.analytics.stats import Stats, TradeFacts

OTHER = "(other)"


class GroupTable:
    def __init__(self, cap: int | None = None, shown: int | None = None, *, brief: bool = False) -> None:
        self.rows: dict[str, Stats] = {}
        self.brief = brief
        self.cap = cap
        self.shown = shown
        self.overflowed = False
        # Keys of the busiest rows, or None when they must be recomputed.
        self._top: set[str] | None = set()
        self._weakest: str | None = None
        # Net change of each top row's activity since the last ranking.
        self._net: dict[str, int] = {}
        # Off while a rebuild adds every trade; the leaderboard is then
        # computed once, at the first snapshot.
        self.ranking = True
        self._documents: dict[str, dict[str, Any]] = {}

    def row_key(self, key: str) -> str:
        """Return the row that counts ``key``, creating it while the cap allows."""
        if key in self.rows:
            return key
        if self.cap is not None and len(self.rows) >= self.cap:
            self.overflowed = True
            key = OTHER
            if key in self.rows:
                return key
        self.rows[key] = Stats()
        return key

    def add(self, key: str, facts: TradeFacts, sign: int) -> str:
        key = self.row_key(key)
        row = self.rows[key]
        row.add(facts, sign)
        self._documents.pop(key, None)
        if row.empty:
            # A trade moves between rows when its opening, which names the
            # market, arrives after its resolution. The emptied row is dropped
            # so that the table equals one built from the final trades.
            del self.rows[key]
            if self._top is not None and key in self._top:
                self._top = None
            return key
        if self.shown is not None:
            if self.ranking:
                self._rank(key, sign)
            else:
                self._top = None
        return key

    def merge(self, key: str, stats: Stats) -> None:
        """Add a cell of sums to the row of ``key``, for a rebuild with ranking off."""
        key = self.row_key(key)
        self.rows[key].merge(stats)
        self._documents.pop(key, None)
        if self.rows[key].empty:
            del self.rows[key]
        self._top = None

    def _rank(self, key: str, sign: int) -> None:
        top = self._top
        if top is None:
            return
        if key in top:
            self._weakest = None
            # A row that lost a trade may drop below one outside the top. A
            # change of a trade's status takes it out and adds it back, so
            # only a net loss since the last ranking forces a new one.
            self._net[key] = self._net.get(key, 0) + sign
            return
        if sign < 0:
            return
        assert self.shown is not None
        if len(top) < self.shown:
            top.add(key)
            self._weakest = None
            return
        if self._weakest is None:
            self._weakest = min(top, key=self._rank_key)
        if self._rank_key(key) > self._rank_key(self._weakest):
            top.discard(self._weakest)
            top.add(key)
            self._weakest = None

    def _rank_key(self, key: str) -> tuple[int, _Descending]:
        # Busier first, and among equals the name first in alphabetical order.
        return (self._activity_count(key), _Descending(key))

    def _activity_count(self, key: str) -> int:
        row = self.rows[key]
        return row.open + row.resolved + row.cancelled

    def shown_keys(self) -> list[str]:
        """Return the keys shown in the document: all, or the busiest, busiest first."""
        if self.shown is None:
            return sorted(key for key, row in self.rows.items() if not row.empty)
        if self._top is not None and any(change < 0 for change in self._net.values()):
            self._top = None
        self._net.clear()
        if self._top is None:
            busiest = heapq.nsmallest(
                self.shown,
                (key for key, row in self.rows.items() if not row.empty),
                key=lambda name: (-self._activity_count(name), name),
            )
            self._top = set(busiest)
            self._weakest = None
        return sorted(
            (key for key in self._top if not self.rows[key].empty),
            key=lambda name: (-self._activity_count(name), name),
        )

    def to_dict(self, min_trades: int) -> dict[str, dict[str, Any]]:
        document: dict[str, dict[str, Any]] = {}
        for key in self.shown_keys():
            cached = self._documents.get(key)
            if cached is None:
                cached = self._documents[key] = self.rows[key].to_dict(min_trades, brief=self.brief)
            document[key] = cached
        return document


class _Descending:
    """Wraps a string so that comparisons run in reverse order."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Descending) -> bool:
        return self.text > other.text

    def __gt__(self, other: _Descending) -> bool:
        return self.text < other.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.text == other.text

