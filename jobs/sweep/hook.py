"""How a supervisor runs the sweep controller: one call per supervisor pass, never raising into its loop.

Why in the supervisor: it already runs wherever traind runs, several at once for high availability, and restarts
with the stack. The controller lease makes exactly one of them drive the sweeps; when that supervisor dies, another
takes over once the lease lapses (2 x TRAIND_LEASE_TTL_S) and carries on from Redis. Optuna (and the client) are
imported only once a sweep exists: a supervisor without sweeps pays one ``SCARD`` per pass.

>>> # hook = SweepHook(r, supervisor_settings); hook.step()   # in the supervisor's loop
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import redis

from jobs.sweep.records import ACTIVE

if TYPE_CHECKING:
    from jobs.settings import CommonSettings
    from jobs.sweep.controller import SweepController

log = logging.getLogger("traind.sweep")
_ERROR_LOG_S = 30.0


class SweepHook:
    def __init__(self, r: redis.Redis, settings: CommonSettings) -> None:
        self.r = r
        self.settings = settings
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._controller: SweepController | None = None
        self._last_error = 0.0

    def step(self, now_ms: int | None = None) -> Any:
        """One controller step when a sweep is active; its report, or None. Logs (rate-limited) instead of raising."""
        try:
            if not self.r.scard(ACTIVE):
                return None
            return self._get().step(now_ms)
        except Exception as e:  # the supervisor's own work must go on whatever a sweep does
            if time.monotonic() - self._last_error > _ERROR_LOG_S:
                self._last_error = time.monotonic()
                log.warning("sweep controller step failed (%s: %s); retrying next pass", type(e).__name__, e,
                            exc_info=not isinstance(e, redis.RedisError))
            return None

    def _get(self) -> SweepController:
        if self._controller is None:
            from jobs.client import Client
            from jobs.settings import ClientSettings
            from jobs.sweep.controller import SweepController

            fields = set(ClientSettings.model_fields)
            client = Client(settings=ClientSettings(**self.settings.model_dump(include=fields)), connection=self.r)
            self._controller = SweepController(self.r, client, self.owner,
                                               lease_ttl_ms=int(2 * self.settings.lease_ttl_s * 1000))
        return self._controller
