"""The metric settings, checked and converted from ``MetricsConfig``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from supervisor.config import ConfigError, MetricsConfig


@dataclass(frozen=True)
class MetricsSettings:
    starting_balance: Decimal
    periods_per_year: int
    # The annual risk-free rate converted to one period, compounded:
    # (1 + annual) ** (1 / periods_per_year) - 1.
    risk_free_per_period: float
    risk_free_rate: float
    break_even_tolerance: Decimal
    min_trades: int
    min_days: int
    zone: ZoneInfo
    rolling_trades: int
    max_markets: int
    top_rows: int

    @classmethod
    def from_config(cls, config: MetricsConfig | None = None) -> MetricsSettings:
        """Check ``config`` and convert it; raises ``ConfigError`` naming the key."""
        config = config or MetricsConfig()
        try:
            zone = ZoneInfo(config.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"metrics.timezone: {config.timezone!r} is not an IANA time zone "
                "such as 'UTC' or 'America/New_York'"
            ) from None
        if config.periods_per_year < 1:
            raise ConfigError(
                f"metrics.periods_per_year must be at least 1, got {config.periods_per_year}"
            )
        if not math.isfinite(config.risk_free_rate) or config.risk_free_rate >= 1:
            raise ConfigError(
                "metrics.risk_free_rate is an annual fraction below 1 (0.04 is 4 %), "
                f"got {config.risk_free_rate}"
            )
        for name in ("rolling_trades", "max_markets", "top_rows"):
            if getattr(config, name) < 1:
                raise ConfigError(f"metrics.{name} must be at least 1, got {getattr(config, name)}")
        per_period = (1.0 + config.risk_free_rate) ** (1.0 / config.periods_per_year) - 1.0
        return cls(
            # str() gives the shortest decimal that reads back as the same
            # float, so 10000.1 in the file is 10000.1 here.
            starting_balance=Decimal(str(config.starting_balance)),
            periods_per_year=config.periods_per_year,
            risk_free_per_period=per_period,
            risk_free_rate=config.risk_free_rate,
            break_even_tolerance=Decimal(str(config.break_even_tolerance)),
            min_trades=config.min_trades,
            min_days=config.min_days,
            zone=zone,
            rolling_trades=config.rolling_trades,
            max_markets=config.max_markets,
            top_rows=config.top_rows,
        )
