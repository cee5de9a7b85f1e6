"""The worker's job switch: the warm heap is frozen once, and the pass between jobs still collects a job's garbage."""

from __future__ import annotations

import gc
import weakref

from worker import runner


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_freeze_once_then_a_jobs_cycles_are_still_collected() -> None:
    runner._freeze_warm_heap()
    frozen = gc.get_freeze_count()
    assert frozen > 0 and runner._heap_frozen
    runner._freeze_warm_heap()  # a second worker in the same process freezes nothing more
    assert gc.get_freeze_count() == frozen

    node = _Node()
    ref = weakref.ref(node)
    del node
    runner._release_memory()  # clear_session without its own pass, then one gc pass
    assert ref() is None
