"""Forecast quality of the probabilities that a bot reports with its trades.

A trade's ``probability`` is the bot's probability that the side it holds
wins. A resolved win scores outcome 1, a loss 0; draws and trades without a
probability are not scored. Sums are fixed-point integers so that a
corrected trade can be taken out exactly.
"""

from __future__ import annotations

import math
from typing import Any

from actors.analytics.series import LOSS, WIN
from actors.analytics.stats import TradeFacts
from actors.analytics.values import Figures, from_fixed, ratio, to_fixed

BUCKETS = 10

# Probabilities are clipped to [EPSILON, 1 - EPSILON] for the log loss, so
# that a confident miss costs about 34.5 instead of infinity.
EPSILON = 1e-15


class ForecastStats:
    """Brier score, log loss and calibration buckets over scored trades."""

    __slots__ = ("count", "brier", "log_loss", "bucket_count", "bucket_probability", "bucket_wins")

    def __init__(self) -> None:
        self.count = 0
        self.brier = 0
        self.log_loss = 0
        self.bucket_count = [0] * BUCKETS
        self.bucket_probability = [0] * BUCKETS
        self.bucket_wins = [0] * BUCKETS

    def add(self, facts: TradeFacts, sign: int) -> None:
        if facts.probability is None or facts.outcome not in (WIN, LOSS):
            return
        probability = float(facts.probability)
        observed = 1.0 if facts.outcome == WIN else 0.0
        clipped = min(max(probability, EPSILON), 1 - EPSILON)
        loss = -math.log(clipped) if observed else -math.log(1 - clipped)
        bucket = min(int(probability * BUCKETS), BUCKETS - 1)
        self.count += sign
        self.brier += sign * to_fixed((probability - observed) ** 2)
        self.log_loss += sign * to_fixed(loss)
        self.bucket_count[bucket] += sign
        self.bucket_probability[bucket] += sign * to_fixed(probability)
        self.bucket_wins[bucket] += sign * int(observed)

    def to_dict(self, min_trades: int) -> dict[str, Any]:
        figures = Figures()
        figures.set("scored_trades", self.count)
        if not self.count:
            figures.undefined("brier_score", "no_forecasts")
            figures.undefined("log_loss", "no_forecasts")
        else:
            figures.set("brier_score", ratio(from_fixed(self.brier) / self.count))
            figures.set("log_loss", ratio(from_fixed(self.log_loss) / self.count))
        buckets = []
        for index in range(BUCKETS):
            count = self.bucket_count[index]
            if not count:
                continue
            buckets.append(
                {
                    "low": index / BUCKETS,
                    "high": (index + 1) / BUCKETS,
                    "trades": count,
                    "mean_probability": ratio(from_fixed(self.bucket_probability[index]) / count),
                    "win_rate": ratio(self.bucket_wins[index] / count),
                    "small_sample": count < min_trades,
                }
            )
        figures.set("calibration", buckets)
        figures.set("small_sample", self.count < min_trades)
        return figures.to_dict()
