"""Configuration: ``config.toml`` plus environment variables for secrets.

Every key has a default, so the service runs with no file at all: SQLite in
``./data``, the feed on 127.0.0.1:8765, and everything external switched off.
An unknown key or a value of the wrong type is an error that names the key,
because a silently ignored typo in a risk setting is worse than a refusal.

Secrets (the OpenAI API key, the Telegram bot token, the ingest token) may come
from the file or from the environment; the environment wins. ``Secret`` keeps
them out of ``repr`` and so out of logs and tracebacks.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration file or an environment variable is invalid."""


class Secret:
    """A string that never shows its value in ``repr`` or ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass
class ServiceConfig:
    # Folder for the database, the archive and the generated ingest token.
    data_dir: Path = Path("data")
    database: str = "tradepulse.sqlite"
    archive_database: str = "archive.sqlite"
    # Bearer token that a bot must present to send trades; when empty, one is
    # generated at start and written to <data_dir>/ingest.token (mode 0600).
    ingest_token: Secret = field(default_factory=lambda: Secret(""))

    @property
    def database_path(self) -> Path:
        return self.data_dir / self.database

    @property
    def archive_path(self) -> Path:
        return self.data_dir / self.archive_database

    @property
    def token_path(self) -> Path:
        return self.data_dir / "ingest.token"


@dataclass
class FeedConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8765
    # Updates a slow client may fall behind by before it is disconnected.
    client_queue: int = 64


@dataclass
class SupervisorConfig:
    # Delay before the first restart of a failed actor, doubled on each
    # consecutive failure up to the maximum (seconds).
    restart_backoff: float = 0.1
    restart_backoff_max: float = 5.0
    # An actor that ran this long before failing restarts with the shortest backoff (seconds).
    stable_after: float = 30.0
    # Restart intensity: more than max_restarts restarts within period seconds,
    # over all actors, stop the service with an error.
    max_restarts: int = 10
    period: float = 60.0
    # "one_for_one" restarts only the failed actor; "rest_for_one" also the
    # actors started after it.
    strategy: str = "one_for_one"
    # Time each actor gets at shutdown to empty its queue before it is cancelled (seconds).
    shutdown_grace: float = 10.0
    # Time one unit of work (a batch write, an HTTP call) may take before the
    # actor counts as hung and is restarted (seconds).
    progress_deadline: float = 120.0


@dataclass
class LoggerConfig:
    # Messages written in one transaction at most.
    batch_max: int = 2000
    # Accepted messages that may wait for the logger before producers block.
    queue_size: int = 10_000
    # Times a message may crash the logger before it is set aside as a dead letter.
    max_attempts: int = 3
    # Time SQLite waits for a lock held by another writer before failing (milliseconds).
    busy_timeout_ms: int = 5000
    # Fallback journal for accepted messages while the database cannot be
    # written; empty means <data_dir>/journal.jsonl.
    journal: str = ""
    # Time between two attempts to move the journal into the database (seconds).
    journal_retry: float = 1.0

    def journal_path(self, database: Path) -> Path:
        return Path(self.journal).expanduser() if self.journal else database.parent / "journal.jsonl"


@dataclass
class MetricsConfig:
    enabled: bool = True
    # Minimum time between two published snapshots (seconds).
    publish_interval: float = 0.25
    # Account balance before the first trade, in the PnL currency. At 0 the
    # percent drawdown and every return-based ratio are null.
    starting_balance: float = 0.0
    # Periods per year for annualizing daily returns: 365 for markets that
    # trade every day, 252 for stock exchange days.
    periods_per_year: int = 365
    # Annual risk-free rate as a fraction (0.04 is 4 %).
    risk_free_rate: float = 0.0
    # A resolved trade whose net PnL lies within this amount of 0 is a draw
    # (currency).
    break_even_tolerance: float = 0.0
    # Figures from fewer resolved trades, or fewer days, are flagged as a
    # small sample.
    min_trades: int = 30
    min_days: int = 30
    # IANA time zone for reported times, calendar breakdowns and
    # hour-of-day patterns.
    timezone: str = "UTC"
    # Trades in the "last N trades" window.
    rolling_trades: int = 100
    # Markets with a row of their own; trades of further markets are summed
    # in one "(other)" row, which bounds memory.
    max_markets: int = 10_000
    # Rows of the by-market and by-tag tables in the document.
    top_rows: int = 10
    # Time between two checkpoints of the metrics state (seconds). Each is
    # written beside the database once no commit has arrived for a second,
    # so that a restart can skip the rebuild. At 0 the actor writes one only
    # when it stops.
    checkpoint_interval: float = 300.0


@dataclass
class ReflectionConfig:
    enabled: bool = True
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key: Secret = field(default_factory=lambda: Secret(""))
    # Reflect after this many newly resolved trades.
    every_resolved: int = 25
    # Resolved trades included in the prompt.
    window: int = 50
    # Time allowed for one completion request, retries included (seconds).
    timeout: float = 30.0
    max_retries: int = 2
    queue_size: int = 1000


@dataclass
class NotifierConfig:
    enabled: bool = True
    api_base: str = "https://api.telegram.org"
    bot_token: Secret = field(default_factory=lambda: Secret(""))
    chat_id: str = ""
    notify_resolved: bool = True
    # Time allowed for one Bot API request (seconds).
    timeout: float = 10.0
    queue_size: int = 1000


@dataclass
class ArchiverConfig:
    enabled: bool = True
    # Resolved and cancelled trades that ended longer ago than this move to
    # the archive file (days).
    retention_days: float = 90.0
    # Time between two archive runs (seconds).
    interval: float = 3600.0
    # Trades moved per transaction.
    chunk_size: int = 1000


@dataclass
class Config:
    service: ServiceConfig = field(default_factory=ServiceConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    reflection: ReflectionConfig = field(default_factory=ReflectionConfig)
    notifier: NotifierConfig = field(default_factory=NotifierConfig)
    archiver: ArchiverConfig = field(default_factory=ArchiverConfig)

    @property
    def reflection_active(self) -> bool:
        return self.reflection.enabled and bool(self.reflection.api_key)

    @property
    def telegram_active(self) -> bool:
        return bool(self.notifier.bot_token) and bool(self.notifier.chat_id)


# Environment variables and the key each one sets. The environment wins over
# the file so that secrets need not be written to disk.
ENVIRONMENT = {
    "TRADEPULSE_INGEST_TOKEN": ("service", "ingest_token"),
    "TRADEPULSE_OPENAI_API_KEY": ("reflection", "api_key"),
    "OPENAI_API_KEY": ("reflection", "api_key"),
    "TRADEPULSE_OPENAI_BASE_URL": ("reflection", "base_url"),
    "TRADEPULSE_OPENAI_MODEL": ("reflection", "model"),
    "TRADEPULSE_TELEGRAM_TOKEN": ("notifier", "bot_token"),
    "TRADEPULSE_TELEGRAM_CHAT_ID": ("notifier", "chat_id"),
    "TRADEPULSE_DATA_DIR": ("service", "data_dir"),
    "TRADEPULSE_FEED_PORT": ("feed", "port"),
}


def _convert(section: str, key: str, kind: Any, value: Any) -> Any:
    name = f"{section}.{key}"
    if kind is Secret:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return Secret(value)
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty path, got {value!r}")
        return Path(value).expanduser()
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{name} must not be negative, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not 0 <= value < float("inf"):
            raise ConfigError(f"{name} must be a finite number of at least 0, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise AssertionError(f"no converter for {kind!r}")


def _field_types(section_type: type) -> dict[str, Any]:
    hints = {"Secret": Secret, "Path": Path, "bool": bool, "int": int, "float": float, "str": str}
    return {f.name: hints[str(f.type)] for f in dataclasses.fields(section_type)}


def build_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Build a configuration from parsed TOML and the environment."""
    config = Config()
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)}

    for section_name, table in data.items():
        if section_name not in sections:
            known = ", ".join(sections)
            raise ConfigError(f"unknown section [{section_name}]; known sections: {known}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{section_name}] must be a table")
        section = sections[section_name]
        types = _field_types(type(section))
        for key, value in table.items():
            if key not in types:
                raise ConfigError(
                    f"unknown key {section_name}.{key}; known keys: {', '.join(types)}"
                )
            setattr(section, key, _convert(section_name, key, types[key], value))

    environ = os.environ if environ is None else environ
    for variable, (section_name, key) in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw is None or raw == "":
            continue
        section = sections[section_name]
        kind = _field_types(type(section))[key]
        value: Any = raw
        if kind is int:
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{variable} must be an integer, got {raw!r}") from None
        # OPENAI_API_KEY is the fallback; the tradepulse variable wins.
        if variable == "OPENAI_API_KEY" and environ.get("TRADEPULSE_OPENAI_API_KEY"):
            continue
        setattr(section, key, _convert(section_name, key, kind, value))

    _check(config)
    return config


def _check(config: Config) -> None:
    # Port 0 asks the system for any free port; tests use it.
    if not 0 <= config.feed.port <= 65535:
        raise ConfigError(f"feed.port must lie between 0 and 65535, got {config.feed.port}")
    if config.archiver.chunk_size > 30_000:
        # Each chunk is bound as SQL parameters; SQLite allows 32766 per statement.
        raise ConfigError(f"archiver.chunk_size must be at most 30000, got {config.archiver.chunk_size}")
    for name, value in (
        ("logger.batch_max", config.logger.batch_max),
        ("logger.queue_size", config.logger.queue_size),
        ("reflection.every_resolved", config.reflection.every_resolved),
        ("reflection.window", config.reflection.window),
        ("archiver.chunk_size", config.archiver.chunk_size),
        ("feed.client_queue", config.feed.client_queue),
    ):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if config.supervisor.strategy not in ("one_for_one", "rest_for_one"):
        raise ConfigError(
            f"supervisor.strategy must be one_for_one or rest_for_one, got {config.supervisor.strategy!r}"
        )
    if config.supervisor.period <= 0:
        raise ConfigError(f"supervisor.period must be greater than 0, got {config.supervisor.period}")
    if config.supervisor.progress_deadline <= 0:
        raise ConfigError(
            f"supervisor.progress_deadline must be greater than 0, got {config.supervisor.progress_deadline}"
        )
    if config.archiver.interval <= 0:
        raise ConfigError(f"archiver.interval must be greater than 0, got {config.archiver.interval}")


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (or only defaults when it is ``None``) and the environment."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    return build_config(data, environ)
