"""A model without a task: one step graph whose state pairs the manifest declares (``docs/manifest.md``).

The server keeps each sequence's state in the graph's stream slots, as for every other stream: a
``Steps`` feeds the graph's other inputs one row per step, returns its other outputs and writes the
new state back for the next step. Steps of many sequences are batched by the engine's scheduler.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contract.manifest import Tensor
from server.config import Config
from server.engine import ModelRunner
from server.errors import InputError, check_finite
from server.graph import Arrays, Holding, Lease


class StatefulTask:
    workers: tuple = ()

    def __init__(self, runner: ModelRunner, config: Config) -> None:
        self.runner, self.config = runner, config
        manifest = runner.model.manifest
        self.graph = manifest.generic_graph
        declared, state = manifest.graphs[self.graph], manifest.state_of(self.graph)
        self.state = state
        self.inputs: list[Tensor] = [t for t in declared.inputs if t.name not in {s.input for s in state}]
        self.outputs: list[Tensor] = [t for t in declared.outputs if t.name not in {s.output for s in state}]

    def check(self, inputs: Arrays) -> None:
        """One step's inputs: every declared one, one row, the declared dtype and sizes, finite numbers."""
        names = [t.name for t in self.inputs]
        if unknown := sorted(set(inputs) - set(names)):
            raise InputError(f"inputs {unknown} are not inputs of this model (its inputs: {names})")
        for tensor in self.inputs:
            if tensor.name not in inputs:
                raise InputError(f"input {tensor.name!r} is missing (the model's inputs: {names})")
            value = inputs[tensor.name]
            if value.dtype != np.dtype(tensor.dtype):
                raise InputError(f"input {tensor.name!r} is {value.dtype}, the model takes {tensor.dtype}")
            expected = [1, *tensor.shape[1:]]  # a symbol ("tokens") takes any size
            fits = len(value.shape) == len(expected) and all(
                isinstance(want, str) or size == want for size, want in zip(value.shape, expected, strict=True))
            if not fits:
                raise InputError(f"input {tensor.name!r} has shape {list(value.shape)}, a step takes {expected} "
                                 "(one row: a sequence advances one step per request)")
            if value.dtype.kind == "f":
                check_finite(f"input {tensor.name!r}", value.ravel().tolist())

    def sequence(self) -> Steps:
        """A sequence, holding one state slot (its state at the manifest's ``initial``) in its ``with`` block."""
        return Steps(self)


class Steps(Holding):
    """One sequence: each ``step`` runs the graph on its inputs and the sequence's state."""

    __slots__ = ("task",)

    def __init__(self, task: StatefulTask) -> None:
        self.task = task

    def take(self) -> Lease:
        return self.task.runner.open(self.task.graph)

    async def step(self, inputs: Arrays) -> Arrays:
        """The graph's outputs that are not state, for checked ``inputs`` (``StatefulTask.check``)."""
        out = await self.task.runner.run(self.task.graph, inputs, self.slots)
        return {t.name: out[t.name] for t in self.task.outputs}

    def frozen(self) -> tuple[Arrays, dict[str, Any]]:
        """Between steps: the state slot, all there is of a sequence, for a resume token (``thaw`` takes it)."""
        return self.task.runner.pools[self.task.graph].snapshot(self.slots), {}

    def thaw(self, state: Arrays) -> None:
        self.task.runner.pools[self.task.graph].restore(self.slots, state)
