"""Logging set-up, with every configured secret masked in every line."""

from __future__ import annotations

import logging
import sys

from supervisor.config import Config


class RedactSecrets(logging.Filter):
    """Replace each secret value with ``***`` in the formatted message.

    This is the last line of defence: code does not log secrets on purpose,
    but a library's error text (an HTTP client's URL, say) may contain one.
    """

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        # Very short values would mask ordinary words; real tokens are long.
        self._secrets = [s for s in secrets if len(s) >= 6]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def setup_logging(level: str, config: Config) -> None:
    """Log to stderr at ``level``, masking the configured secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(
        RedactSecrets(
            [
                config.service.ingest_token.reveal(),
                config.reflection.api_key.reveal(),
                config.notifier.bot_token.reveal(),
            ]
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO, and a Telegram URL contains the
    # bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("openai").setLevel(logging.WARNING)
