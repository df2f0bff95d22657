"""Queues between actors, owned by the supervisor so that they outlive a crash.

trio discards a memory channel's buffer when its last receive end closes. The
supervisor therefore creates every queue once and hands the same object to each
incarnation of an actor; an actor never closes its inbox.

``Mailbox`` never drops: a producer waits while it is full. A batch taken from
it stays "in flight" until the consumer acknowledges it, and a consumer that
crashes before acknowledging receives the same batch again after its restart.
``DropQueue`` is for best-effort consumers (notifications, reflection): it
never blocks a producer and counts what it drops instead.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A bounded, lossless queue with at-least-once delivery of batches."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self._send, self._receive = trio.open_memory_channel[T](capacity)
        self._in_flight: list[T] = []
        self.delivered = 0

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting while the mailbox is full."""
        await self._send.send(item)

    def put_nowait(self, item: T) -> None:
        """Queue ``item``; raises ``trio.WouldBlock`` when the mailbox is full."""
        self._send.send_nowait(item)

    async def take_batch(self, max_items: int) -> list[T]:
        """Wait for at least one item and return up to ``max_items`` of them.

        An unacknowledged batch is returned again first, whole.
        """
        if self._in_flight:
            return list(self._in_flight)
        first = await self._receive.receive()
        batch = [first]
        while len(batch) < max_items:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        self._in_flight = batch
        return list(batch)

    def ack(self) -> None:
        """Mark the batch returned by ``take_batch`` as done."""
        self.delivered += len(self._in_flight)
        self._in_flight = []

    @property
    def depth(self) -> int:
        """Items waiting, in flight included."""
        return self._send.statistics().current_buffer_used + len(self._in_flight)

    def close(self) -> None:
        """Stop accepting items; consumers still drain what is queued."""
        self._send.close()


class DropQueue(Generic[T]):
    """A bounded queue that drops new items when full and counts them."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self._send, self._receive = trio.open_memory_channel[T](capacity)
        self.dropped = 0

    def offer(self, item: T) -> bool:
        """Queue ``item`` without waiting; return False if it was dropped."""
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1
            return False
        except trio.ClosedResourceError:
            self.dropped += 1
            return False
        return True

    async def get(self) -> T:
        return await self._receive.receive()

    def get_nowait(self) -> T:
        """Return the next item; raises ``trio.WouldBlock`` when empty."""
        return self._receive.receive_nowait()

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    def close(self) -> None:
        self._send.close()


class Backlog(Generic[T]):
    """An unbounded queue whose producer never waits, for a fast consumer.

    The metrics actor consumes each committed transaction in O(1) per trade,
    so this stays short; while that actor restarts it grows, and the restarted
    actor skips what its rebuild from the database already covers.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: collections.deque[T] = collections.deque()
        self._ready = trio.Event()

    def put(self, item: T) -> None:
        self._items.append(item)
        self._ready.set()

    async def take_all(self) -> list[T]:
        """Wait until at least one item is queued, then return all of them in order."""
        while not self._items:
            await self._ready.wait()
            self._ready = trio.Event()
        return self.take_nowait()

    def take_nowait(self) -> list[T]:
        """Return all queued items in order, possibly none, without waiting."""
        items = list(self._items)
        self._items.clear()
        return items

    @property
    def depth(self) -> int:
        return len(self._items)
