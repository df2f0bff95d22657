"""The websocket server: live metrics out (``/feed``) and trades in (``/ingest``).

``/feed`` sends the current metrics snapshot on connect, then every update, as
JSON text messages. It needs no token: it only reads, and it binds to
127.0.0.1 by default.

``/ingest`` requires ``Authorization: Bearer <token>``. Each text message is
one JSON message object, or an array of them. Replies come in request order,
one per request, and an ``accepted`` reply is sent only after the messages are
committed to the database::

    {"status": "accepted", "ref": ..., "key": "<trade or decision id>"}
    {"status": "rejected", "ref": ..., "error": "...", "field": "size", "value": -1}
    {"status": "partial", "accepted": 9, "rejected": [{"index": 3, ...}]}   (arrays)

Every client has its own bounded queue and sender task, so one client that
stops reading cannot stall the others; it is closed with code 1008 instead.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from actors.logger import Envelope
from actors.messages import InvalidMessage, Message, dumps
from supervisor.config import FeedConfig
from supervisor.intake import Intake, IntakeClosed, decode_json

log = logging.getLogger(__name__)

# Requests on one ingest connection that may wait for their commit before the
# server stops reading from that connection.
INGEST_PIPELINE = 1024

# Time allowed for a close handshake with a client that is not reading (seconds).
CLOSE_TIMEOUT = 2.0

# Messages one ingest request may hold, and rejections listed in its reply.
MAX_ARRAY = 10_000
MAX_REJECTIONS_LISTED = 100


class FeedHub:
    """Holds the latest documents and fans them out to feed clients."""

    def __init__(self, client_queue: int) -> None:
        self._client_queue = client_queue
        self._clients: dict[int, trio.MemorySendChannel[str]] = {}
        self._lagging: set[int] = set()
        self._next_id = 0
        self.latest_metrics: dict[str, Any] | None = None
        self.latest_status: dict[str, Any] | None = None
        # The latest encoded document of each type, sent to a client on connect.
        self._latest_text: dict[str, str] = {}

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def publish(self, document: dict[str, Any]) -> None:
        """Send ``document`` to every client; never waits."""
        text = dumps(document)
        kind = str(document.get("type"))
        self._latest_text[kind] = text
        if kind == "metrics":
            self.latest_metrics = document
        elif kind == "status":
            self.latest_status = document
        for client_id, channel in list(self._clients.items()):
            try:
                channel.send_nowait(text)
            except trio.WouldBlock:
                self._lagging.add(client_id)
                channel.close()
            except trio.ClosedResourceError:
                pass

    async def serve_client(self, connection: WebSocketConnection, peer: str) -> None:
        """Stream documents to one client until it leaves or falls behind."""
        client_id = self._next_id
        self._next_id += 1
        send, receive = trio.open_memory_channel[str](self._client_queue)
        for text in list(self._latest_text.values())[: self._client_queue]:
            send.send_nowait(text)
        self._clients[client_id] = send
        log.info("feed: client %s connected (%d clients)", peer, len(self._clients))
        try:
            async with receive:
                async for text in receive:
                    await connection.send_message(text)
            if client_id in self._lagging:
                log.warning("feed: client %s fell %d updates behind; closing it", peer, self._client_queue)
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await connection.aclose(code=1008, reason="client too slow")
        except ConnectionClosed:
            pass
        finally:
            self._clients.pop(client_id, None)
            self._lagging.discard(client_id)
            log.info("feed: client %s disconnected", peer)


def _bearer_token(request: WebSocketRequest) -> str | None:
    for name, value in request.headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None


async def _ingest(connection: WebSocketConnection, intake: Intake, peer: str) -> None:
    """Read requests, queue them, and reply in order once each is committed."""
    replies_send, replies_receive = trio.open_memory_channel[
        tuple[list[Envelope], Callable[[], dict[str, Any]]]
    ](INGEST_PIPELINE)
    owed = 0
    intake.open_connections += 1

    async def send_replies() -> None:
        nonlocal owed
        async with replies_receive:
            async for envelopes, reply in replies_receive:
                for envelope in envelopes:
                    if not envelope.committed.is_set():
                        await envelope.committed.wait()
                await connection.send_message(dumps(reply()))
                owed -= 1
                intake.pending_replies -= 1

    reading = trio.CancelScope()

    async def read_requests() -> None:
        nonlocal owed
        async with replies_send:
            with reading:
                while True:
                    text = await connection.get_message()
                    request = await _handle_request(text, intake)
                    owed += 1
                    intake.pending_replies += 1
                    await replies_send.send(request)

    async def close_at_shutdown() -> None:
        # Once the intake closes, stop reading, send the replies still owed,
        # then close with 1001 so that the bot can tell that every earlier
        # reply has arrived.
        await intake.closed.wait()
        reading.cancel()
        while owed:
            await trio.sleep(0.01)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await connection.aclose(code=1001, reason="tradepulse is shutting down")
        nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_replies)
            nursery.start_soon(read_requests)
            nursery.start_soon(close_at_shutdown)
    except* ConnectionClosed:
        log.info("ingest: client %s disconnected", peer)
    finally:
        intake.pending_replies -= owed
        intake.open_connections -= 1


async def _handle_request(
    text: str | bytes, intake: Intake
) -> tuple[list[Envelope], Callable[[], dict[str, Any]]]:
    try:
        data = decode_json(text)
    except ValueError as error:
        reply = {"status": "rejected", "error": f"request is not valid JSON: {error}"}
        return [], lambda: reply

    if isinstance(data, list):
        if len(data) > MAX_ARRAY:
            reply = {
                "status": "rejected",
                "error": f"a request holds {len(data)} messages; send at most {MAX_ARRAY} per request",
            }
            return [], lambda: reply
        return await _handle_array(data, intake)

    ref = data.get("ref") if isinstance(data, dict) else None
    try:
        message = intake.validate(data)
        envelope = await intake.submit(message)
    except InvalidMessage as error:
        reply = {"status": "rejected", "ref": ref, **error.to_dict()}
        return [], lambda: reply
    except IntakeClosed as error:
        reply = {"status": "rejected", "ref": ref, "error": str(error)}
        return [], lambda: reply
    key = envelope.message.key

    def reply() -> dict[str, Any]:
        # Called once the message is committed, when the logger may have
        # found it wrong against the stored trade.
        if envelope.rejection is not None:
            return {"status": "rejected", "ref": ref, **envelope.rejection.to_dict()}
        return {"status": "accepted", "ref": ref, "key": key}

    return [envelope], reply


async def _handle_array(
    items: list[Any], intake: Intake
) -> tuple[list[Envelope], Callable[[], dict[str, Any]]]:
    valid: list[Message] = []
    # The index in the request of each valid message, and the ref it carries.
    positions: list[tuple[int, Any]] = []
    rejected: list[dict[str, Any]] = []
    rejected_count = 0
    for index, item in enumerate(items):
        if index % 500 == 499:
            # Validation costs tens of microseconds a message; let other
            # connections run during a large request.
            await trio.lowlevel.checkpoint()
        ref = item.get("ref") if isinstance(item, dict) else None
        try:
            valid.append(intake.validate(item))
            positions.append((index, ref))
        except InvalidMessage as error:
            if len(rejected) < MAX_REJECTIONS_LISTED:
                rejected.append({"index": index, "ref": ref, **error.to_dict()})
            rejected_count += 1
    envelopes: list[Envelope] = []
    if valid:
        try:
            envelopes = await intake.submit_many(valid)
        except IntakeClosed as error:
            reply = {"status": "rejected", "error": str(error)}
            return [], lambda: reply

    def reply() -> dict[str, Any]:
        # Called once every message is committed: the logger may have found
        # some wrong against their stored trades.
        late = [
            (positions[number], envelope.rejection)
            for number, envelope in enumerate(envelopes)
            if envelope.rejection is not None
        ]
        listed = list(rejected)
        for (index, ref), error in late:
            if len(listed) < MAX_REJECTIONS_LISTED:
                listed.append({"index": index, "ref": ref, **error.to_dict()})
        listed.sort(key=lambda entry: entry["index"])
        accepted = len(envelopes) - len(late)
        count = rejected_count + len(late)
        if not count:
            status = "accepted"
        elif accepted:
            status = "partial"
        else:
            status = "rejected"
        return {
            "status": status,
            "accepted": accepted,
            "rejected_count": count,
            # The first rejections only, so that a reply stays small.
            "rejected": listed,
        }

    return envelopes, reply


async def run_feed_server(
    config: FeedConfig,
    hub: FeedHub,
    intake: Intake,
    ingest_token: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/feed`` and ``/ingest`` until cancelled; reports the bound port."""

    async def handle(request: WebSocketRequest) -> None:
        peer = str(request.remote)
        path = request.path.split("?", 1)[0]
        if path in ("/", "/feed"):
            connection = await request.accept()
            await hub.serve_client(connection, peer)
        elif path == "/ingest":
            token = _bearer_token(request)
            if token is None or not hmac.compare_digest(token.encode(), ingest_token.encode()):
                log.warning("ingest: rejected client %s: missing or wrong bearer token", peer)
                await request.reject(401, body=b"missing or wrong bearer token\n")
                return
            if not intake.accepting:
                await request.reject(503, body=b"tradepulse is shutting down\n")
                return
            connection = await request.accept()
            log.info("ingest: client %s connected", peer)
            await _ingest(connection, intake, peer)
        else:
            await request.reject(404, body=b"unknown path; use /feed or /ingest\n")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handle, config.host, config.port, None)
        port = server.port
        log.info("feed: listening on ws://%s:%d/feed and /ingest", config.host, port)
        task_status.started(port)

