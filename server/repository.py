"""The served repository: every model version with its engine (``ModelRunner``) and its task adapter.

Built at start-up from the model repository (``contract/repository.py``, with the server's ONNX
Runtime sessions), and for each version that hot reload adds (``server/reload.py``); generators are
built here with their adapters, not by servicers. Each call holds a lease on the version it uses, so
that a version removed from disk is unloaded only once its last stream has ended.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from contract.repository import Model, load_repository
from server.config import Config
from server.engine import ModelRunner
from server.graph import session_factory
from server.metrics import Metrics
from server.tasks import TASKS, Task


@dataclass(eq=False)
class Served:
    """One model version as served: the model, its engine and its task adapter."""

    model: Model
    runner: ModelRunner
    task: Task
    leases: int = field(default=0, repr=False)  # calls using this version now

    def hold(self) -> None:
        self.leases += 1

    def release(self) -> None:
        self.leases -= 1

    @property
    def busy(self) -> bool:
        """Whether a call uses this version or a stream holds one of its state slots (a KServe sequence holds them
        between its requests)."""
        return self.leases > 0 or any(graph.slots.in_use for graph in self.runner.graphs.values() if graph.slots)

    def warm_up(self) -> None:
        self.runner.warm_up()

    def start(self) -> None:
        self.runner.start()
        for worker in self.task.workers:
            worker.start()

    async def stop(self) -> None:
        await asyncio.gather(self.runner.stop(), *(worker.stop() for worker in self.task.workers))

    async def unload(self) -> None:
        """Stop it and take it off ``/metrics``."""
        await self.stop()
        self.runner.unregister()


Repository = dict[str, dict[int, Served]]


def load(config: Config, metrics: Metrics) -> Repository:
    """Every model of ``config.models``, validated, with its engine and adapter."""
    served: Repository = {}
    for name, versions in load_repository(Path(config.models), session_factory(config)).items():
        for version, model in versions.items():
            served.setdefault(name, {})[version] = build(model, config, metrics)
    return served


def build(model: Model, config: Config, metrics: Metrics) -> Served:
    """``model`` (loaded and validated) with its engine and adapter, not started yet."""
    runner = ModelRunner(model, config, metrics)
    return Served(model, runner, TASKS[model.task](runner, config))
