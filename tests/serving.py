"""A real server in the test process: ``Running`` serves a ``Config`` on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

from server.app import Server
from server.config import Config


class Running:
    """A ``Server`` on its own event loop in a background thread."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Server = self.call(self._start(config))
        self.target = f"127.0.0.1:{self.server.port}"

    async def _start(self, config: Config) -> Server:
        server = Server(config)
        await server.start()
        return server

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics").read().decode()

    def sample(self, name: str, **labels: str) -> float:
        """One sample's value from the metrics page (0 when absent)."""
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample of ``name`` with ``labels`` (whatever its other labels)."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics().splitlines()
                   if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))

    def in_use(self) -> int:
        return sum(graph.slots.in_use for served in self.server.served for graph in served.runner.graphs.values()
                   if graph.slots)

    def stop(self) -> None:
        self.call(self.server.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


