"""The batcher on its own: a batch closes by size or by its oldest item's wait."""

from __future__ import annotations

from dataclasses import dataclass

from digitd.batcher import Batcher


@dataclass(frozen=True)
class Item:
    name: str
    ready_at: float


def items(n: int, at: float = 100.0, prefix: str = "f") -> list[Item]:
    return [Item(f"{prefix}{i}", at) for i in range(n)]


def test_empty():
    b: Batcher[Item] = Batcher(4, 0.01)
    assert len(b) == 0 and b.deadline() is None
    assert b.take(1e9) == [] and b.take(1e9, flush=True) == []


def test_a_full_batch_closes_at_once_and_takes_at_most_max_size_in_order():
    b: Batcher[Item] = Batcher(4, 10.0)
    b.add(items(10))
    first = b.take(100.0)
    assert [i.name for i in first] == ["f0", "f1", "f2", "f3"]
    assert [i.name for i in b.take(100.0)] == ["f4", "f5", "f6", "f7"]
    assert b.take(100.0) == []  # two left: neither full nor waited long enough
    assert len(b) == 2


def test_a_partial_batch_closes_when_its_oldest_item_has_waited_max_wait():
    b: Batcher[Item] = Batcher(64, 0.010)
    b.add([Item("old", 100.0)])
    b.add([Item("new", 100.008)])
    assert b.deadline() == 100.010
    assert b.take(100.009) == []
    assert [i.name for i in b.take(100.010)] == ["old", "new"]
    assert b.deadline() is None


def test_the_deadline_follows_the_oldest_item_left():
    b: Batcher[Item] = Batcher(2, 1.0)
    b.add([Item("a", 10.0), Item("b", 11.0), Item("c", 12.5)])
    assert [i.name for i in b.take(10.0)] == ["a", "b"]
    assert b.deadline() == 13.5


def test_flush_takes_what_is_waiting_without_waiting():
    b: Batcher[Item] = Batcher(64, 60.0)
    b.add(items(3))
    assert b.take(100.0) == []
    assert len(b.take(100.0, flush=True)) == 3
