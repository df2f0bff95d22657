"""The single entry point for messages from a bot, whatever the transport.

The websocket ingest endpoint and the in-process replay both submit through
``Intake``, so that validation, backpressure and shutdown behave the same.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

from actors.logger import Envelope
from actors.messages import InvalidMessage, Message, parse_message
import trio

from supervisor.mailbox import Mailbox

log = logging.getLogger(__name__)


class IntakeClosed(Exception):
    """The service is shutting down and accepts no more messages."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number here")


def decode_json(text: str | bytes) -> Any:
    """Decode JSON with exact decimals; raises ``ValueError`` for invalid input.

    NaN and Infinity are rejected, and so is nesting deep enough to exhaust
    the parser's recursion.
    """
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nesting too deep") from None


class Intake:
    """Validates messages and queues them for the logger."""

    def __init__(self, mailbox: Mailbox[Envelope]) -> None:
        self._mailbox = mailbox
        self.accepting = True
        self.accepted = 0
        self.rejected = 0
        # Set when the intake closes; ingest connections then close with 1001.
        self.closed = trio.Event()
        # Replies that ingest connections still owe their clients.
        self.pending_replies = 0
        # Ingest connections not yet closed; shutdown waits for their 1001 close.
        self.open_connections = 0

    def validate(self, data: Any) -> Message:
        """Parse one decoded JSON message; raises ``InvalidMessage``."""
        try:
            return parse_message(data)
        except InvalidMessage:
            self.rejected += 1
            raise

    async def submit(self, message: Message) -> Envelope:
        """Queue a validated message; wait while the logger is behind.

        The returned envelope's ``committed`` event is set once the message
        is in the database.
        """
        if not self.accepting:
            raise IntakeClosed("tradepulse is shutting down and accepts no more messages")
        envelope = Envelope(message)
        await self._mailbox.put(envelope)
        self.accepted += 1
        return envelope

    async def submit_many(self, messages: list[Message]) -> list[Envelope]:
        """Queue several validated messages with one scheduling point while there is room."""
        if not self.accepting:
            raise IntakeClosed("tradepulse is shutting down and accepts no more messages")
        envelopes = []
        for message in messages:
            envelope = Envelope(message)
            try:
                self._mailbox.put_nowait(envelope)
            except trio.WouldBlock:
                await self._mailbox.put(envelope)
            envelopes.append(envelope)
            self.accepted += 1
        await trio.lowlevel.checkpoint()
        return envelopes

    def close(self) -> None:
        """Stop accepting; messages already queued are still written."""
        if self.accepting:
            log.info("intake: closed after %d accepted messages", self.accepted)
        self.accepting = False
        self.closed.set()
