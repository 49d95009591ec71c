"""serving/heap.py: after a load, live objects leave the collector's generations and
garbage made before is collected; a later freeze releases what an earlier one kept."""

from __future__ import annotations

import gc
import weakref

from feedrank.serving.heap import freeze_loaded


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


def test_freeze_collects_garbage_then_freezes_what_lives():
    try:
        garbage = _Node()
        gone = weakref.ref(garbage)
        del garbage
        kept = [_Node() for _ in range(100)]
        res = freeze_loaded("test")
        assert gone() is None and res.collected >= 1
        assert res.frozen > 0 and gc.get_freeze_count() > 0
        in_generations = {id(o) for g in range(3) for o in gc.get_objects(g)}
        assert gc.is_tracked(kept[0]) and id(kept[0]) not in in_generations  # frozen: no collection walks it
        assert res.reason == "test" and res.pause_ms >= 0
    finally:
        gc.unfreeze()


def test_a_second_freeze_collects_cycles_the_first_one_froze():
    """A swapped-out model's cycles must not stay frozen for the life of the process."""
    try:
        old_model = _Node()
        old = weakref.ref(old_model)
        freeze_loaded("first model")
        del old_model  # now unreachable, but frozen: plain collections skip it
        gc.collect()
        assert old() is not None
        freeze_loaded("swap")
        assert old() is None
    finally:
        gc.unfreeze()
