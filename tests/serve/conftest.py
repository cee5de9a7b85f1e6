"""``traind serve`` fixtures: the real app under uvicorn on a free port in this process, and a tiny slow spec."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from daemon.serve.app import create_app
from jobs.settings import ServeSettings
from testkit.cluster import free_port, wait_for

TOKEN = "full-token-5f1c0d9a7e"
READ_TOKEN = "read-token-9b2e41c3aa"


def slow_spec(name: str = "served", epochs: int = 4, batch_delay_s: float = 0.05, n: int = 300) -> dict[str, Any]:
    """~5 batches per epoch of ``batch_delay_s`` each: slow enough to watch, fast enough for the suite."""
    return {
        "name": name,
        "model": {"builder": "tests.models:slow_regression",
                  "builder_kwargs": {"units": 8, "learning_rate": 0.05, "batch_delay_s": batch_delay_s}},
        "data": {"loader": "tests.models:load_data", "loader_kwargs": {"n": n}},
        "fit": {"epochs": epochs, "batch_size": 50, "validation_split": 0.3, "seed": 1},
        "checkpoint": {"monitor": "val_loss", "save_weights_only": True},
    }


@dataclass
class Served:
    url: str
    app: Any
    server: uvicorn.Server

    def client(self, token: str | None = TOKEN, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kw)


@pytest.fixture()
def served(redis_url: str, storage_dir: Path) -> Iterator[Served]:
    settings = ServeSettings(redis_url=redis_url, storage_dir=storage_dir, api_token=TOKEN,
                             api_read_tokens=[READ_TOKEN], port=free_port(), sse_heartbeat_s=1.0)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning",
                                           log_config=None))
    t = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    t.start()
    wait_for(lambda: server.started, 30, "uvicorn to start")
    wait_for(lambda: app.state.hub.connected.is_set(), 30, "the notification subscription")
    yield Served(f"http://127.0.0.1:{settings.port}", app, server)
    server.should_exit = True
    t.join(30)
