"""The Python client: submit specs or ``fit`` a Keras model remotely, then watch the job.

:mod:`jobs.client.submit` (the :class:`Client` and its submit path), :mod:`jobs.client.fit` (``Client.fit``),
:mod:`jobs.client.handle` (:class:`JobHandle`, a submitted job).

>>> # client = Client(redis_url="redis://localhost:6379/0", storage="/mnt/ckpt")
>>> # job = client.submit("examples/regression.yaml"); job.wait(600); job.history()[-1]["val_loss"]
"""

from __future__ import annotations

from jobs.client.handle import JobHandle
from jobs.client.quiet import quiet_tensorflow
from jobs.client.submit import Client

__all__ = ["Client", "JobHandle", "quiet_tensorflow"]
