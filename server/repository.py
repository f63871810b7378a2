"""The served repository: every model version with its engine (``ModelRunner``) and its task adapter.

Built once at start-up from the model repository (``contract/repository.py``, with the server's
ONNX Runtime sessions); generators are built here with their adapters, not by servicers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from contract.repository import Model, load_repository
from server.config import Config
from server.engine import ModelRunner
from server.graph import session_factory
from server.metrics import Metrics
from server.tasks import TASKS, Task


@dataclass
class Served:
    """One model version as served: the model, its engine and its task adapter."""

    model: Model
    runner: ModelRunner
    task: Task

    def warm_up(self) -> None:
        self.runner.warm_up()

    def start(self) -> None:
        self.runner.start()
        for worker in self.task.workers:
            worker.start()

    async def stop(self) -> None:
        await asyncio.gather(self.runner.stop(), *(worker.stop() for worker in self.task.workers))


Repository = dict[str, dict[int, Served]]


def load(config: Config, metrics: Metrics) -> Repository:
    """Every model of ``config.models``, validated, with its engine and adapter."""
    served: Repository = {}
    for name, versions in load_repository(Path(config.models), session_factory(config)).items():
        for version, model in versions.items():
            runner = ModelRunner(model, config, metrics)
            served.setdefault(name, {})[version] = Served(model, runner, TASKS[model.task](runner, config))
    return served
