"""Job code that attacks its own worker (issue 8.1); tests put ``tests.security.hostile`` on the allowlist.

* :func:`raise_base` raises a ``BaseException`` that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``,
  ``GeneratorExit``): it must fail its job, never end the worker.
* :func:`kill_worker` SIGKILLs the worker process from inside the builder, on every attempt (a poison job: what an
  OOM kill or a segfault looks like from outside).
"""

from __future__ import annotations

import os
import signal
from typing import Any

_KINDS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit,
}


def raise_base(kind: str, arg: Any = "raised by job code") -> Any:
    """A builder that raises ``kind`` (a name of :data:`_KINDS`) with ``arg``."""
    raise _KINDS[kind](arg)


def kill_worker() -> Any:
    """A builder that kills the process running it with SIGKILL."""
    os.kill(os.getpid(), signal.SIGKILL)
