"""How many small calls go as one job, for ``Runner.map`` and for a flow's ``foreach``
items alike. Pure: cpu sizes follow from what workers measured, io sizes from the
cluster's loops and the job's limit.

Rules:

1. Only CPU calls without a timeout or retries are chunked: a timeout or a retry is per
   call, and a chunk is one attempt.
2. Chunks start at one item, at most two per worker in flight ("probing"), until one
   returns and says how long an item takes; then they grow to about ``TARGET_CHUNK_S``
   of work, at most ``MAX_CHUNK`` items.
3. When the number of items is known, a chunk never exceeds a quarter of each worker's
   share, so the last chunks still spread over every worker.
4. Io calls go in chunks only where each job crosses processes (a cluster's loops): a
   chunk runs its calls at once on one loop, so ``IO_CHUNKS_PER_LOOP`` chunks per loop
   must fit in the limit, the loops' io slots and the calls there are; at most
   ``MAX_IO_CHUNK`` calls (``io_chunk_size``).
"""

from __future__ import annotations

import math

#: 30 ms: on a cluster a chunk crosses client, coordinator and node loop each way, and at
#: 10 ms that overhead took the workers' cores from them (Monte Carlo through one node,
#: bench_cluster_montecarlo.py: 1.12 x Pool at 10 ms, 1.02 x at 30 ms; embedded
#: Runner.map level with Pool either way). Rule 3 bounds the tail it adds.
TARGET_CHUNK_S = 0.03
MAX_CHUNK = 1024
#: io calls per chunk at most: a chunk holds its units until its slowest call ends
MAX_IO_CHUNK = 64
#: io chunks in flight per loop a limit should allow, so a loop has the next chunk's calls
#: running while one chunk's outcomes travel back
IO_CHUNKS_PER_LOOP = 2


def chunk_size(item_s: float | None, total: int | None, workers: int) -> int:
    """Items per chunk: about ``TARGET_CHUNK_S`` of work, at most a quarter of each
    worker's share of ``total`` (when known); 1 until an item's cost is measured."""
    if item_s is None:
        return 1
    size = MAX_CHUNK if item_s <= 0 else int(TARGET_CHUNK_S / item_s)
    if total is not None:
        size = min(size, math.ceil(total / (4 * workers)))
    return max(1, min(size, MAX_CHUNK))


def io_chunk_size(most: int | None, loops: int, slots: int | None,
                  total: int | None = None) -> int:
    """Io calls per chunk on ``loops`` loop processes with ``slots`` io slots in all
    (None: unknown), for ``total`` calls (None: unknown) under a limit of ``most`` at once
    (None: none): ``IO_CHUNKS_PER_LOOP`` chunks per loop fit in the limit, in the slots
    and, as rule 3 says for cpu chunks, in the calls there are."""
    if loops <= 0:
        return 1
    room = min(x for x in (most, slots, total, MAX_IO_CHUNK * IO_CHUNKS_PER_LOOP * loops)
               if x is not None)
    return max(1, min(MAX_IO_CHUNK, room // (IO_CHUNKS_PER_LOOP * loops)))


class Chunker:
    """The chunk sizes of one map or one ``foreach`` job.

    :param workers: CPU workers that run the chunks at once
    :param total: how many items there are, when known
    """

    __slots__ = ("workers", "total", "_item_s", "_size")

    def __init__(self, workers: int, total: int | None) -> None:
        self.workers = max(1, workers)
        self.total = total
        self._item_s: float | None = None
        self._size = chunk_size(None, total, self.workers)

    @property
    def item_s(self) -> float | None:
        """Seconds per item, as workers measured it (None until a chunk returns)."""
        return self._item_s

    @item_s.setter
    def item_s(self, value: float | None) -> None:
        self._item_s = value
        # kept: a flow asks for it as often as an item ends
        self._size = chunk_size(value, self.total, self.workers)

    def size(self) -> int:
        return self._size

    def room(self, room: int, in_flight: int) -> int:
        """How many chunks may start now, out of ``room``: fewer while probing (rule 2)."""
        if self._item_s is None:
            return min(room, 2 * self.workers - in_flight)
        return room

    def measured(self, elapsed_s: float, items: int) -> None:
        """A chunk of ``items`` took ``elapsed_s`` in its worker."""
        per_item = elapsed_s / items
        self.item_s = per_item if self.item_s is None else 0.7 * self.item_s + 0.3 * per_item
