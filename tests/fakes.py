"""Loopback HTTP servers that stand in for the OpenAI and Telegram APIs in tests.

Each fake is a real HTTP/1.1 server on 127.0.0.1, written with trio and h11, so
that the code under test goes through its real client (openai, httpx) and its
real error paths: status codes, slow replies, closed connections. Start one in
a test's nursery; it stops when that nursery is cancelled::

    async def test_send(nursery):
        telegram = await start_fake_telegram(nursery, token="123:abc")
        telegram.enqueue(TelegramReply(status=429, retry_after=3))
        ...  # point the notifier at telegram.url
        await telegram.wait_for_requests(2)
        assert telegram.delivered[0]["text"] == "hello"

Replies are scripted per request: each request takes the next queued reply, or
the fake's default reply when the queue is empty.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import h11
import trio

HOST = "127.0.0.1"

# Maximum request body a fake accepts (bytes); the code under test sends a few KB.
MAX_BODY = 1_000_000


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as a fake server received it."""

    method: str
    path: str
    # Header names are lower-cased; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes
    # trio.current_time() on arrival, so that tests with a MockClock can check waits.
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Response:
    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


def closed_port_url() -> str:
    """Return an http URL on 127.0.0.1 whose port has no listener.

    The port was free a moment ago; another process could take it before the
    test connects, but on a test machine that is rare.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    return f"http://{HOST}:{port}"


class LoopbackServer:
    """An HTTP/1.1 server on 127.0.0.1 that records requests; subclasses route them."""

    def __init__(self) -> None:
        self.port = 0
        self.requests: list[ReceivedRequest] = []
        self._arrived = trio.Event()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        """Listen on a free port of 127.0.0.1 in ``nursery``."""
        listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host=HOST))
        self.port = listeners[0].socket.getsockname()[1]

    async def wait_for_requests(self, count: int) -> list[ReceivedRequest]:
        """Wait until at least ``count`` requests have arrived, and return them all.

        There is no timeout here: wrap the call in ``trio.fail_after``.
        """
        while len(self.requests) < count:
            await self._arrived.wait()
        return list(self.requests)

    async def respond(self, request: ReceivedRequest) -> _Response:
        raise NotImplementedError

    async def _serve(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        try:
            while True:
                request = await _read_request(connection, stream)
                if request is None:
                    return
                self.requests.append(request)
                self._arrived.set()
                self._arrived = trio.Event()

                response = await self.respond(request)
                await _send_response(connection, stream, response)
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            # The client closed the connection, for instance after its own
            # timeout, so the response cannot be sent.
            return
        finally:
            await stream.aclose()


async def _next_event(connection: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        # An empty read is the end of the stream, which h11 expects as b"".
        connection.receive_data(await stream.receive_some(65536))


async def _read_request(
    connection: h11.Connection, stream: trio.SocketStream
) -> ReceivedRequest | None:
    event = await _next_event(connection, stream)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise h11.RemoteProtocolError(f"expected a request, got {event!r}")

    body = bytearray()
    while True:
        part = await _next_event(connection, stream)
        if isinstance(part, h11.Data):
            body += part.data
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            raise h11.RemoteProtocolError(f"request body ended by {part!r}")

    return ReceivedRequest(
        method=event.method.decode(),
        path=event.target.decode(),
        headers={name.decode().lower(): value.decode() for name, value in event.headers},
        body=bytes(body),
        received_at=trio.current_time(),
    )


async def _send_response(
    connection: h11.Connection, stream: trio.SocketStream, response: _Response
) -> None:
    payload = json.dumps(response.body).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(payload))),
        *response.headers,
    ]
    head = h11.Response(status_code=response.status, headers=headers)
    await stream.send_all(connection.send(head))
    await stream.send_all(connection.send(h11.Data(data=payload)))
    await stream.send_all(connection.send(h11.EndOfMessage()))


# ---------------------------------------------------------------------------
# OpenAI chat completions


@dataclass(frozen=True)
class ChatReply:
    """A scripted reply of ``FakeOpenAI`` to one request."""

    # Assistant message content; used only when ``status`` is 200.
    content: str = "{}"
    status: int = 200
    # Time the fake waits before replying (seconds).
    delay: float = 0.0
    # Error message in the OpenAI error object sent with a non-200 status.
    error: str = "The server had an error while processing your request."


class FakeOpenAI(LoopbackServer):
    """A fake of ``POST /v1/chat/completions`` in the OpenAI wire format.

    With ``api_key`` set, a request without ``Authorization: Bearer <api_key>``
    gets 401 with a message that quotes the key it presented.
    """

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.default = ChatReply()
        self._replies: deque[ChatReply] = deque()

    @property
    def base_url(self) -> str:
        """The value for ``openai.AsyncOpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    def enqueue(self, *replies: ChatReply) -> None:
        """Queue replies for the next requests, in order."""
        self._replies.extend(replies)

    @property
    def completions(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat completion requests received."""
        return [
            request.json()
            for request in self.requests
            if request.method == "POST" and request.path == "/v1/chat/completions"
        ]

    async def respond(self, request: ReceivedRequest) -> _Response:
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return _openai_error(404, f"Unknown request URL: {request.method} {request.path}")
        if self.api_key is not None:
            presented = request.headers.get("authorization", "").removeprefix("Bearer ")
            if presented != self.api_key:
                # The real API quotes the key too, partly masked, so a client
                # that logs this message leaks part of its key.
                message = f"Incorrect API key provided: {presented}."
                return _openai_error(401, message, code="invalid_api_key")

        reply = self._replies.popleft() if self._replies else self.default
        if reply.delay:
            await trio.sleep(reply.delay)
        if reply.status != 200:
            return _openai_error(reply.status, reply.error)

        model = request.json().get("model", "unknown")
        body = {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
        }
        return _Response(200, body)


def _openai_error(status: int, message: str, code: str | None = None) -> _Response:
    error_type = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return _Response(status, body)


async def start_fake_openai(nursery: trio.Nursery, api_key: str | None = None) -> FakeOpenAI:
    """Start a ``FakeOpenAI`` on 127.0.0.1 in ``nursery`` and return it."""
    fake = FakeOpenAI(api_key)
    await fake.start(nursery)
    return fake


# ---------------------------------------------------------------------------
# Telegram Bot API

_BOT_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")

# The sendMessage text limit of the Bot API (characters).
TELEGRAM_TEXT_LIMIT = 4096


@dataclass(frozen=True)
class TelegramReply:
    """A scripted reply of ``FakeTelegram`` to one sendMessage request."""

    status: int = 200
    # Sent as ``parameters.retry_after`` (seconds) when set, as Telegram does with 429.
    retry_after: int | None = None
    description: str | None = None
    # Time the fake waits before replying (seconds).
    delay: float = 0.0


class FakeTelegram(LoopbackServer):
    """A fake of the Bot API method ``POST /bot<token>/sendMessage``.

    A wrong token gets 401 and another method 404, as on the real API. A body
    without ``chat_id`` or ``text``, or with a text over 4096 characters, gets
    400 with Telegram's description.
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.default = TelegramReply()
        self._replies: deque[TelegramReply] = deque()
        # JSON bodies of the sendMessage requests that got status 200.
        self.delivered: list[dict[str, Any]] = []

    @property
    def api_base(self) -> str:
        """The value for ``NotifierConfig.api_base``."""
        return self.url

    def enqueue(self, *replies: TelegramReply) -> None:
        """Queue replies for the next sendMessage requests, in order."""
        self._replies.extend(replies)

    @property
    def received(self) -> list[dict[str, Any]]:
        """The JSON bodies of every sendMessage request, failed ones included."""
        return [request.json() for request in self.requests if _is_send(request, self.token)]

    async def respond(self, request: ReceivedRequest) -> _Response:
        match = _BOT_PATH.match(request.path)
        if request.method != "POST" or match is None:
            return _telegram_error(404, "Not Found")
        if match["token"] != self.token:
            return _telegram_error(401, "Unauthorized")
        if match["method"] != "sendMessage":
            return _telegram_error(404, "Not Found")

        reply = self._replies.popleft() if self._replies else self.default
        if reply.delay:
            await trio.sleep(reply.delay)
        if reply.status == 429:
            wait = reply.retry_after if reply.retry_after is not None else 1
            return _telegram_error(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
        if reply.status != 200:
            return _telegram_error(reply.status, reply.description or "Internal Server Error")

        message = request.json()
        text = message.get("text")
        if not message.get("chat_id"):
            return _telegram_error(400, "Bad Request: chat_id is empty")
        if not isinstance(text, str) or not text:
            return _telegram_error(400, "Bad Request: message text is empty")
        if len(text) > TELEGRAM_TEXT_LIMIT:
            return _telegram_error(400, "Bad Request: message is too long")

        self.delivered.append(message)
        result = {
            "message_id": len(self.delivered),
            "date": int(time.time()),
            "chat": {"id": message["chat_id"], "type": "private"},
            "text": text,
        }
        return _Response(200, {"ok": True, "result": result})


def _is_send(request: ReceivedRequest, token: str) -> bool:
    return request.method == "POST" and request.path == f"/bot{token}/sendMessage"


def _telegram_error(status: int, description: str, retry_after: int | None = None) -> _Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return _Response(status, body)


async def start_fake_telegram(nursery: trio.Nursery, token: str) -> FakeTelegram:
    """Start a ``FakeTelegram`` that accepts ``token``, on 127.0.0.1 in ``nursery``."""
    fake = FakeTelegram(token)
    await fake.start(nursery)
    return fake
