"""Batching, after TensorFlow Serving: a batch closes when it holds `max_size` items or when
its oldest item has waited `max_wait_s`, whichever comes first."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar


class _Timed(Protocol):
    ready_at: float  # monotonic seconds when the item became ready


T = TypeVar("T", bound=_Timed)


class Batcher(Generic[T]):
    """A FIFO of ready items cut into batches by size or by the oldest item's wait."""

    def __init__(self, max_size: int, max_wait_s: float) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._items: deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Iterable[T]) -> None:
        self._items.extend(items)

    def deadline(self) -> float | None:
        """When the oldest item's wait runs out (None when empty)."""
        return self._items[0].ready_at + self.max_wait_s if self._items else None

    def take(self, now: float, *, flush: bool = False) -> list[T]:
        """The next batch if one has closed (or, with `flush`, whatever is waiting), else []."""
        if not self._items:
            return []
        full = len(self._items) >= self.max_size
        if not (full or flush or now >= self._items[0].ready_at + self.max_wait_s):
            return []
        return [self._items.popleft() for _ in range(min(self.max_size, len(self._items)))]
