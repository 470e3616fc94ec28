"""Bounded single-producer/single-consumer rings between threads.

Every queue between threads is bounded with a stated drop policy. Audio
drops the oldest item and counts it, so a stalled consumer costs freshness, never memory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Ring(Generic[T]):
    """A bounded FIFO that drops the oldest item when full.

    `on_push`, if set, runs after each push in the producer's thread; the media loop uses it to
    wake an awaiting consumer. It must be cheap and must not raise.
    """

    def __init__(self, capacity: int, on_push: Callable[[], object] | None = None) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1")
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self.pushed = 0
        self.dropped = 0
        self.on_push = on_push

    def push(self, item: T) -> None:
        with self._lock:
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.pushed += 1
        callback = self.on_push
        if callback is not None:
            callback()

    def pop(self) -> T | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def drain(self) -> list[T]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)
