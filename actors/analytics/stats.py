"""What one trade contributes to the metrics, and the sums over a group of trades.

``TradeFacts`` is derived once per trade state from the stored fields, by the
same function for a live change and for a rebuild from the database, so that
both count a trade alike. ``Stats`` holds sums from which a group's figures
follow; each sum can take a trade's contribution out again, so that a
corrected or cancelled trade costs O(1).
"""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

from actors.analytics.series import DRAW, LOSS, WIN
from actors.trades import Position
from actors.analytics.values import MONEY_CONTEXT, ZERO, decimal_ratio, from_fixed, ratio, to_fixed

UNKNOWN = "unknown"

# A per-trade ratio needs no more digits than a float holds.
RATIO_CONTEXT = Context(prec=28)
OUTCOME_CODES = {"win": WIN, "loss": LOSS, "draw": DRAW}

# Sides on which a rising price gains. "yes" and "no" are shares of one side
# of a binary market, bought, so a rising price of that share gains too.
_SHORT_SIDES = frozenset({"short", "sell"})


def classify(pnl: Decimal, stored: str | None, tolerance: Decimal) -> int:
    """Return WIN, LOSS or DRAW for a resolved trade.

    The net PnL decides, with a break-even band of ``tolerance`` either side
    of 0. An outcome that the bot sent and that contradicts the sign of the
    PnL (a void market refunded less fees, reported as a draw) is kept.
    """
    if pnl > 0:
        by_sign = "win"
    elif pnl < 0:
        by_sign = "loss"
    else:
        by_sign = "draw"
    if stored is not None and stored != by_sign:
        return OUTCOME_CODES[stored]
    if pnl > tolerance:
        return WIN
    if pnl < -tolerance:
        return LOSS
    return DRAW


class TradeFacts:
    """One trade's state, reduced to what the metrics use."""

    __slots__ = (
        "trade_id", "status", "strategy", "venue", "market", "side", "market_kind",
        "signal_type", "tags", "cost", "risk", "fees", "pnl", "outcome", "r_fixed",
        "opened_us", "resolved_us", "hold_us", "probability", "exit_price",
        "unrealized", "slippage_cost", "slippage_bps_fixed", "size", "requested_size",
        "open_realized", "excess_exit",
    )

    def __init__(
        self,
        trade_id: str,
        status: str,
        strategy: str | None,
        venue: str | None,
        market: str | None,
        side: str | None,
        market_kind: str | None,
        signal_type: str | None,
        tags: tuple[str, ...],
        size: Decimal | None,
        entry_price: Decimal | None,
        entry_fees: Decimal,
        exit_fees: Decimal,
        pnl: Decimal | None,
        stored_outcome: str | None,
        probability: Decimal | None,
        exit_price: Decimal | None,
        opened_us: int | None,
        resolved_us: int | None,
        tolerance: Decimal,
        mark_price: Decimal | None = None,
        expected_price: Decimal | None = None,
        requested_size: Decimal | None = None,
        position: Position | None = None,
    ) -> None:
        self.trade_id = trade_id
        self.status = status
        self.strategy = strategy or UNKNOWN
        self.venue = venue or UNKNOWN
        self.market = market or UNKNOWN
        self.side = side
        self.market_kind = market_kind
        self.signal_type = signal_type
        self.tags = tags
        if position is not None:
            # Fills after the opening: fees of every entry and exit count.
            entry_fees = position.entered_fees
            exit_fees = MONEY_CONTEXT.add(exit_fees, position.exit_fees)
        self.fees = MONEY_CONTEXT.add(entry_fees, exit_fees)
        self.probability = probability
        self.exit_price = exit_price
        self.opened_us = opened_us
        self.resolved_us = resolved_us if status == "resolved" else None
        if position is not None and position.entered_size:
            # Capital at risk is the cost of every entry. What is exposed
            # while open is the cost basis still held.
            self.risk: Decimal | None = MONEY_CONTEXT.add(position.entered_cost, entry_fees)
            self.cost: Decimal | None = position.held_cost if status == "open" else position.entered_cost
        elif size is not None and entry_price is not None:
            self.cost = MONEY_CONTEXT.multiply(size, entry_price)
            # Capital at risk: what the position cost, entry fees included.
            # For a binary share that is exactly the most it can lose.
            self.risk = MONEY_CONTEXT.add(self.cost, entry_fees)
        else:
            self.cost = self.risk = None
        if status == "resolved":
            self.pnl: Decimal | None = pnl if pnl is not None else ZERO
            self.outcome: int | None = classify(self.pnl, stored_outcome, tolerance)
            if self.risk is not None and self.risk > 0:
                ratio_of_risk = float(RATIO_CONTEXT.divide(self.pnl, self.risk))
                self.r_fixed: int | None = to_fixed(ratio_of_risk)
            else:
                self.r_fixed = None
            if opened_us is not None and resolved_us is not None:
                self.hold_us: int | None = max(0, resolved_us - opened_us)
            else:
                self.hold_us = None
        else:
            self.pnl = None
            self.outcome = None
            self.r_fixed = None
            self.hold_us = None
        self._execution(size, entry_price, entry_fees, mark_price, expected_price, requested_size)
        # PnL that partial exits realized on a position still open. Once the
        # trade resolves, its PnL covers them.
        self.open_realized = ZERO
        self.excess_exit = position is not None and position.excess_size > 0
        if position is not None and status != "cancelled":
            self.size = position.entered_size
            if status == "open":
                self.open_realized = position.realized
                self.unrealized = None
                if mark_price is not None:
                    move = MONEY_CONTEXT.subtract(
                        MONEY_CONTEXT.multiply(position.held_size, mark_price), position.held_cost
                    )
                    self.unrealized = MONEY_CONTEXT.subtract(
                        move if self.direction > 0 else -move, position.held_fees
                    )

    def _execution(
        self,
        size: Decimal | None,
        entry_price: Decimal | None,
        entry_fees: Decimal,
        mark_price: Decimal | None,
        expected_price: Decimal | None,
        requested_size: Decimal | None,
    ) -> None:
        direction = self.direction
        self.size = size if self.status != "cancelled" else ZERO
        self.requested_size = requested_size
        self.unrealized: Decimal | None = None
        self.slippage_cost: Decimal | None = None
        self.slippage_bps_fixed: int | None = None
        if size is None or entry_price is None:
            return
        if self.status == "open" and mark_price is not None:
            # What closing at the mark would realize, the entry fees already paid.
            move = MONEY_CONTEXT.multiply(MONEY_CONTEXT.subtract(mark_price, entry_price), size)
            self.unrealized = MONEY_CONTEXT.subtract(move if direction > 0 else -move, entry_fees)
        if self.status != "cancelled" and expected_price is not None and expected_price > 0:
            # Positive when the fill was worse than expected: paid more on a
            # buy, received less on a sale.
            worse = MONEY_CONTEXT.subtract(entry_price, expected_price)
            if direction < 0:
                worse = -worse
            self.slippage_cost = MONEY_CONTEXT.multiply(worse, size)
            self.slippage_bps_fixed = to_fixed(float(RATIO_CONTEXT.divide(worse, expected_price)) * 10_000)

    @property
    def direction(self) -> int:
        return -1 if self.side in _SHORT_SIDES else 1


class Stats:
    """Invertible sums over a group of trades."""

    __slots__ = (
        "open", "resolved", "cancelled", "wins", "losses", "draws",
        "pnl", "gross_profit", "gross_loss", "win_pnl", "loss_pnl", "fees", "exposure",
        "r_sum", "r_count", "hold_sum", "hold_count", "unrealized", "marked", "open_realized",
    )

    def __init__(self) -> None:
        self.open = self.resolved = self.cancelled = 0
        self.wins = self.losses = self.draws = 0
        self.pnl = self.gross_profit = self.gross_loss = ZERO
        self.win_pnl = self.loss_pnl = self.fees = self.exposure = ZERO
        self.r_sum = self.r_count = self.hold_sum = self.hold_count = 0
        self.unrealized = ZERO
        self.marked = 0
        self.open_realized = ZERO

    def add(self, facts: TradeFacts, sign: int) -> None:
        """Add a trade's contribution (``sign`` 1) or take it out (-1)."""
        add = MONEY_CONTEXT.add
        status = facts.status
        if status == "open":
            self.open += sign
            if facts.cost is not None:
                self.exposure = add(self.exposure, facts.cost if sign > 0 else -facts.cost)
            if facts.unrealized is not None:
                self.marked += sign
                self.unrealized = add(self.unrealized, facts.unrealized if sign > 0 else -facts.unrealized)
            if facts.open_realized:
                realized = facts.open_realized
                self.open_realized = add(self.open_realized, realized if sign > 0 else -realized)
            return
        if status == "cancelled":
            self.cancelled += sign
            return
        pnl = facts.pnl
        assert pnl is not None
        signed = pnl if sign > 0 else -pnl
        self.resolved += sign
        self.pnl = add(self.pnl, signed)
        if pnl > 0:
            self.gross_profit = add(self.gross_profit, signed)
        elif pnl < 0:
            self.gross_loss = add(self.gross_loss, -signed)
        outcome = facts.outcome
        if outcome == WIN:
            self.wins += sign
            self.win_pnl = add(self.win_pnl, signed)
        elif outcome == LOSS:
            self.losses += sign
            self.loss_pnl = add(self.loss_pnl, signed)
        else:
            self.draws += sign
        if facts.fees:
            self.fees = add(self.fees, facts.fees if sign > 0 else -facts.fees)
        if facts.r_fixed is not None:
            self.r_sum += sign * facts.r_fixed
            self.r_count += sign
        if facts.hold_us is not None:
            self.hold_sum += sign * facts.hold_us
            self.hold_count += sign

    def merge(self, other: Stats) -> None:
        """Add every sum of ``other`` to this one."""
        add = MONEY_CONTEXT.add
        for name in ("open", "resolved", "cancelled", "wins", "losses", "draws",
                     "r_sum", "r_count", "hold_sum", "hold_count", "marked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("pnl", "gross_profit", "gross_loss", "win_pnl", "loss_pnl", "fees", "exposure",
                     "unrealized", "open_realized"):
            setattr(self, name, add(getattr(self, name), getattr(other, name)))

    @property
    def empty(self) -> bool:
        return not (self.open or self.resolved or self.cancelled)

    def to_dict(self, min_trades: int, *, brief: bool = False) -> dict[str, Any]:
        """Return the group's figures, each undefined one null with its reason under "undefined".

        ``brief`` keeps the counts, win rate, realized PnL and profit factor.
        """
        undefined: dict[str, str] = {}
        resolved = self.resolved
        wins, losses = self.wins, self.losses
        decided = wins + losses
        document: dict[str, Any] = {"open": self.open, "resolved": resolved}
        if not brief:
            document["cancelled"] = self.cancelled
        document["wins"] = wins
        document["losses"] = losses
        document["draws"] = self.draws
        # Draws count neither way: the rate is over decided trades.
        document["win_rate"] = round(wins / decided, 6) if decided else None
        document["realized_pnl"] = float(self.pnl)
        if not decided:
            undefined["win_rate"] = "no_decided_trades"
        if not brief:
            document["gross_profit"] = float(self.gross_profit)
            document["gross_loss"] = float(self.gross_loss)
        if self.gross_loss:
            document["profit_factor"] = round(decimal_ratio(self.gross_profit, self.gross_loss), 6)
        else:
            document["profit_factor"] = None
            undefined["profit_factor"] = "no_losing_trades" if resolved else "no_trades"
        if not brief:
            self._details(document, undefined)
        document["small_sample"] = resolved < min_trades
        if undefined:
            document["undefined"] = undefined
        return document

    def _details(self, document: dict[str, Any], undefined: dict[str, str]) -> None:
        if self.resolved:
            document["expectancy"] = ratio(decimal_ratio(self.pnl, Decimal(self.resolved)))
        else:
            document["expectancy"] = None
            undefined["expectancy"] = "no_trades"
        if self.r_count:
            document["expectancy_r"] = ratio(from_fixed(self.r_sum) / self.r_count)
        else:
            document["expectancy_r"] = None
            undefined["expectancy_r"] = "no_capital_at_risk" if self.resolved else "no_trades"
        average_win = decimal_ratio(self.win_pnl, Decimal(self.wins)) if self.wins else None
        average_loss = decimal_ratio(self.loss_pnl, Decimal(self.losses)) if self.losses else None
        document["average_win"] = ratio(average_win)
        if average_win is None:
            undefined["average_win"] = "no_winning_trades"
        document["average_loss"] = ratio(average_loss)
        if average_loss is None:
            undefined["average_loss"] = "no_losing_trades"
        if average_win is not None and average_loss:
            document["payoff_ratio"] = ratio(average_win / -average_loss)
        else:
            document["payoff_ratio"] = None
            undefined["payoff_ratio"] = "no_winning_trades" if average_win is None else "no_losing_trades"
        document["fees"] = float(self.fees)
        document["open_exposure"] = float(self.exposure)
        document["unrealized_pnl"] = float(self.unrealized)
        document["marked_open"] = self.marked
        document["open_realized_pnl"] = float(self.open_realized)
        if self.hold_count:
            document["average_holding_seconds"] = round(self.hold_sum / self.hold_count / 1e6, 3)
        else:
            document["average_holding_seconds"] = None
            undefined["average_holding_seconds"] = "no_opening_time" if self.resolved else "no_trades"


class ExecutionStats:
    """Slippage against the expected price, and filled against requested size, over all trades."""

    __slots__ = (
        "filled_size", "requested_size", "sized", "slippage_bps", "slippage_cost", "slipped",
        "excess_exits",
    )

    def __init__(self) -> None:
        self.slipped = 0
        self.slippage_cost = ZERO
        self.slippage_bps = 0
        self.sized = 0
        self.requested_size = ZERO
        self.filled_size = ZERO
        # Positions whose exit fills add up to more than their entries.
        self.excess_exits = 0

    def add(self, facts: TradeFacts, sign: int) -> None:
        add = MONEY_CONTEXT.add
        if facts.excess_exit:
            self.excess_exits += sign
        if facts.slippage_cost is not None and facts.slippage_bps_fixed is not None:
            self.slipped += sign
            self.slippage_cost = add(self.slippage_cost, facts.slippage_cost if sign > 0 else -facts.slippage_cost)
            self.slippage_bps += sign * facts.slippage_bps_fixed
        if facts.requested_size is not None and facts.size is not None:
            self.sized += sign
            requested, filled = facts.requested_size, facts.size
            self.requested_size = add(self.requested_size, requested if sign > 0 else -requested)
            self.filled_size = add(self.filled_size, filled if sign > 0 else -filled)

    def figures(self, document: dict[str, Any], undefined: dict[str, str]) -> None:
        """Add the slippage and size fill figures to an execution section."""
        document["excess_exit_positions"] = self.excess_exits
        document["slipped_trades"] = self.slipped
        if self.slipped:
            document["slippage"] = float(self.slippage_cost)
            document["average_slippage_bps"] = ratio(from_fixed(self.slippage_bps) / self.slipped, 3)
        else:
            document["slippage"] = document["average_slippage_bps"] = None
            undefined["slippage"] = undefined["average_slippage_bps"] = "no_expected_price"
        if self.sized and self.requested_size > 0:
            document["size_fill_rate"] = ratio(decimal_ratio(self.filled_size, self.requested_size))
        else:
            document["size_fill_rate"] = None
            undefined["size_fill_rate"] = "no_requested_size"
