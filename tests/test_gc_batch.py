"""sim.gc_batch: the collector batched inside a run, restored after it (also when the run fails)."""

import gc
import weakref

import pytest

from sim.gc_batch import YOUNG_GC_THRESHOLD, batched_gc


def test_batched_inside_and_restored_after():
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    keep = [[i] for i in range(100)]          # tracked containers that exist before the run
    with batched_gc():
        assert gc.get_threshold()[0] == max(before[0], YOUNG_GC_THRESHOLD)
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() >= frozen_before + len(keep)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_restored_when_the_run_raises():
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    with pytest.raises(RuntimeError), batched_gc():
        raise RuntimeError("a failed run")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_a_callers_frozen_heap_stays_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with batched_gc():
            assert gc.get_threshold()[0] >= YOUNG_GC_THRESHOLD
        assert gc.get_freeze_count() == frozen     # not unfrozen by the run
    finally:
        gc.unfreeze()


def test_cycles_made_during_the_run_are_still_collected_without_being_asked():
    # batched, not off: a reference cycle dropped during the run is freed by an automatic young
    # collection once YOUNG_GC_THRESHOLD more containers have been made (gc.disable() fails this)
    class Node:
        pass

    with batched_gc():
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None                     # only reference counting so far
        churn = [[] for _ in range(2 * YOUNG_GC_THRESHOLD)]
        assert gone() is None
        del churn


def test_a_workload_is_made_without_collections_and_frozen_with_the_heap():
    runs = []

    def count(phase, info):
        if phase == "start":
            runs.append(info["generation"])

    frozen_before = gc.get_freeze_count()
    gc.callbacks.append(count)
    try:
        with batched_gc() as gcb:
            with gcb.acyclic():
                table = [(i, (i, i)) for i in range(3 * YOUNG_GC_THRESHOLD)]   # would collect 3+ times
            assert runs == []
            assert gc.isenabled()
            assert gc.get_freeze_count() >= frozen_before + len(table)
        assert gc.get_freeze_count() == frozen_before          # unfrozen with the run's heap
    finally:
        gc.callbacks.remove(count)
