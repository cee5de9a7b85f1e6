"""traind's shared contract: job specs, states and transitions, Redis keys and scripts, the queue, the client.

The public names are loaded on first use (PEP 562), so ``import jobs.contract.keys`` (every traind process does)
does not
pay for the client's imports (rq, numpy, pydantic); read-only CLI commands stay fast.

>>> from jobs import Client, JobState
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs.client import Client, JobHandle
    from jobs.contract.spec import JobSpec
    from jobs.contract.states import JobState

__all__ = ["Client", "JobHandle", "JobSpec", "JobState"]

_LAZY = {"Client": "jobs.client", "JobHandle": "jobs.client", "JobSpec": "jobs.contract.spec",
         "JobState": "jobs.contract.states"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
