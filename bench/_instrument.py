"""Wall-clock timers wrapped around methods for the length of a ``with`` block (the benchmarks' profiler).

>>> class A:
...     def f(self, x):
...         return x + 1
>>> with Timers() as t:
...     t.wrap(A, "f")
...     A().f(1)
2
>>> t.count("A.f")
1
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any


class Timers:
    """Records ``(seconds, on_main_thread, started_at)`` for each call of every wrapped callable."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, bool, float]]] = defaultdict(list)
        self._undo: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        """Time ``owner.name`` (a class's method or a module's function) until the block ends."""
        label = label or f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        fn = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                main = threading.current_thread() is threading.main_thread()
                with self._lock:
                    self.calls[label].append((dt, main, t0))

        replacement: Any = timed
        if isinstance(original, staticmethod):
            replacement = staticmethod(timed)
        elif isinstance(original, classmethod):
            replacement = classmethod(timed)
        setattr(owner, name, replacement)
        self._undo.append(lambda: setattr(owner, name, original))

    def total(self, label: str, main: bool | None = None) -> float:
        return sum(dt for dt, m, _ in self.calls.get(label, []) if main is None or m == main)

    def count(self, label: str, main: bool | None = None) -> int:
        return sum(1 for _, m, _ in self.calls.get(label, []) if main is None or m == main)

    def durations(self, label: str) -> list[float]:
        return [dt for dt, _, _ in self.calls.get(label, [])]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()

    def __enter__(self) -> Timers:
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
