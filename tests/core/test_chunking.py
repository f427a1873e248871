"""Chunk sizes: ``Chunker`` keeps its size with what was measured (a flow asks for it as
often as an item ends, so it is kept, not computed each time)."""

from __future__ import annotations

from asyncjobs.core.chunking import MAX_CHUNK, Chunker, chunk_size


def test_a_chunker_probes_with_chunks_of_one_then_follows_what_was_measured() -> None:
    chunker = Chunker(2, 3000)
    assert chunker.size() == 1 and chunker.item_s is None
    assert chunker.room(100, 1) == 3  # two probing chunks per worker in flight at most
    chunker.measured(0.003, 3)  # 1 ms an item: 30 ms of work is 30 items
    assert chunker.item_s == 0.001 and chunker.size() == 30 == chunk_size(0.001, 3000, 2)
    assert chunker.room(100, 1) == 100
    chunker.measured(0.0, 10)  # 0.7 * 1 ms: 42 items
    assert chunker.size() == chunk_size(0.0007, 3000, 2) == 42


def test_a_chunker_set_by_hand_sizes_as_chunk_size_does() -> None:
    chunker = Chunker(4, None)
    chunker.item_s = 1e-9
    assert chunker.size() == MAX_CHUNK
    chunker.item_s = None
    assert chunker.size() == 1
    small = Chunker(2, 40)  # a quarter of each worker's share: 5
    small.item_s = 1e-6
    assert small.size() == 5 == chunk_size(1e-6, 40, 2)
