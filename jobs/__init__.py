"""traind's shared contract: job specs, states and transitions, Redis keys and scripts, the queue, the client.

>>> from jobs import Client, JobState
"""

from jobs.client import Client, JobHandle
from jobs.spec import JobSpec
from jobs.states import JobState

__all__ = ["Client", "JobHandle", "JobSpec", "JobState"]
