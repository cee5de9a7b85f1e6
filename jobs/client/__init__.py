"""The Python client: submit specs or ``fit`` a Keras model remotely, then watch the job.

:mod:`jobs.client.submit` (the :class:`Client` and its submit path), :mod:`jobs.client.fit` (``Client.fit``),
:mod:`jobs.client.handle` (:class:`JobHandle`, a submitted job).

>>> # client = Client(redis_url="redis://localhost:6379/0", storage="/mnt/ckpt")
>>> # job = client.submit("examples/regression.yaml"); job.wait(600); job.history()[-1]["val_loss"]
>>> # Client(api_url="https://traind.example", token=...)   # the same over `traind serve` (jobs.remote)
"""

from __future__ import annotations

from jobs.client.handle import JobHandle
from jobs.client.quiet import quiet_tensorflow
from jobs.client.submit import Client


def _remote_class() -> type[Client]:
    from jobs.remote.client import RemoteClient  # httpx: imported only when an API URL is configured

    return RemoteClient


Client.remote_class = _remote_class  # Client(api_url=...) (or TRAIND_API_URL) is a jobs.remote.client.RemoteClient

__all__ = ["Client", "JobHandle", "quiet_tensorflow"]
