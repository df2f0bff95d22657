"""The fallback journal: accepted messages kept while the database fails.

When SQLite cannot be written (disk full, locked, read-only), the logger
appends each batch to this file as JSON lines, syncs it to disk and only then
acknowledges the batch. Once the database works again the logger replays the
journal into it and truncates the file. Storage is idempotent by trade id, so
a crash between the replay's commit and the truncation only replays again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from actors.messages import InvalidMessage, Message, dumps, message_to_dict, parse_message

log = logging.getLogger(__name__)


class Journal:
    """An append-only file of messages waiting for the database."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, messages: Sequence[Message]) -> None:
        """Append and fsync; raises ``OSError`` if the journal cannot be written either."""
        text = "".join(dumps(message_to_dict(m)) + "\n" for m in messages)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())

    def read(self) -> list[Message]:
        """Return the journaled messages in order.

        A line cut short by a crash during ``append`` was never acknowledged,
        so it is skipped with a warning.
        """
        messages: list[Message] = []
        with open(self.path, encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.endswith("\n"):
                    log.warning("journal: skipped incomplete line %d of %s", number, self.path)
                    continue
                try:
                    messages.append(parse_message(json.loads(line)))
                except (ValueError, InvalidMessage) as error:
                    log.error("journal: skipped unreadable line %d of %s: %s", number, self.path, error)
        return messages

    def clear(self) -> None:
        with open(self.path, "w", encoding="utf-8") as file:
            file.flush()
            os.fsync(file.fileno())
