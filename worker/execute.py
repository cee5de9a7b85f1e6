"""The function name RQ records for traind messages (``worker.execute.train``).

traind workers pop messages themselves (see :mod:`jobs.contract.queue`); RQ never imports or runs this. If someone
points a plain ``rq worker`` at a traind queue, the job fails loudly instead of training outside traind's lease.
"""

from __future__ import annotations


def train(job_id: str, attempt: int) -> None:
    raise RuntimeError(
        f"traind job {job_id} (attempt {attempt}) was taken by a plain RQ worker; run `traind worker` instead"
    )
