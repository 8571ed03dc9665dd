"""Python's cyclic garbage collector batched for the length of a run (`batched_gc`).

A run allocates millions of small containers (requests, block tables, a conversation's segment
runs and hash chains); CPython's collector scans the young ones every 700 container allocations,
and on bench/sessions_100k.yaml that was some 470 collections taking 0.14 s (~3 % of the run),
freeing almost nothing: these objects are freed by reference counting, not by the collector
(batched: 7 collections, 0.04 s; peak RSS 206 -> 228 MB).  During a run, young
collections happen every YOUNG_GC_THRESHOLD allocations instead and what existed before the run is
frozen out of every collection (vLLM's EngineCore freezes its start-up heap the same way,
`gc.freeze()` in `EngineCore.__init__`).  Only cyclic garbage waits longer to be freed; results do
not depend on it.  The thresholds and the frozen objects are restored afterwards (a caller that
froze its own heap keeps it frozen: only the threshold changes then).  The workload is made with
the collector paused and then frozen too (`Batch.acyclic`): its tuples hold no cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_GC_THRESHOLD = 50_000   # container allocations between young-generation collections


class Batch:
    """What `batched_gc` yields: `acyclic()` for the making of a run's workload."""

    def __init__(self, froze: bool):
        self.froze = froze

    @contextmanager
    def acyclic(self) -> Iterator[None]:
        """No collection while the block makes objects that hold no reference cycle (a workload
        table: 100k session turns are ~600k tuples, over which young collections ran a dozen
        times for nothing); afterwards they are frozen out of every collection with the heap
        from before the run, when `batched_gc` froze that (and unfreezes them with it)."""
        was = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if was:
                gc.enable()
            if self.froze:
                gc.freeze()


@contextmanager
def batched_gc() -> Iterator[Batch]:
    before = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0      # a caller's own frozen heap is left as it is (unfreeze is all or nothing)
    if freeze:
        gc.freeze()
    gc.set_threshold(max(before[0], YOUNG_GC_THRESHOLD), *before[1:])
    try:
        yield Batch(freeze)
    finally:
        gc.set_threshold(*before)
        if freeze:
            gc.unfreeze()
