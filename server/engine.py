"""The per-step engine: state kept on the host in slot rows, and one batching scheduler per graph.

Nothing here knows a task. A step request carries one or more rows of one stream; the scheduler
gathers ready requests up to ``max_batch`` rows, waiting at most ``max_wait_ms`` after the first,
runs ONNX Runtime once in the graph's own thread (never on the event loop), scatters the new state
back to the slots and resolves each request's future with its rows of the other outputs.

Beam search, sentiment and forecast streams step through here; greedy decoding runs in the
generation loop instead (``server/generation.py``), which shares the graphs' stream slots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from contract.manifest import Reference
from contract.repository import Model
from server.config import Config
from server.errors import Overloaded
from server.graph import Arrays, Graph, Lease, initial_state
from server.metrics import Metrics

log = logging.getLogger(__name__)
Result = TypeVar("Result")


class StatePool:
    """Every state tensor of one graph as a ``[max_streams, *shape]`` array; a stream owns rows (its slots)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.arrays = {s.input: np.zeros((graph.slots.capacity, *s.shape), dtype=s.dtype) for s in graph.state}
        # A constant ``initial`` is written as the scalar it is, not as a row made anew for every stream.
        self.constants = {s.input: np.array(s.initial, dtype=s.dtype) for s in graph.state
                          if not isinstance(s.initial, Reference)}

    def initialize(self, slots: np.ndarray, sources: dict[str, Arrays]) -> None:
        """Set each state of ``slots`` to its ``initial`` value."""
        for spec in self.graph.state:
            constant = self.constants.get(spec.input)
            self.arrays[spec.input][slots] = initial_state(spec, sources) if constant is None else constant

    def reorder(self, slots: np.ndarray, parents: np.ndarray) -> None:
        """Beam search: row ``i`` of ``slots`` takes the state of row ``parents[i]``."""
        for array in self.arrays.values():
            array[slots] = array[slots[parents]]

    def snapshot(self, slots: np.ndarray) -> Arrays:
        return {name: array[slots].copy() for name, array in self.arrays.items()}

    def restore(self, slots: np.ndarray, saved: Arrays) -> None:
        for name, array in self.arrays.items():
            array[slots] = saved[name]


@dataclass
class StepRequest:
    inputs: Arrays  # plain inputs and context, each [rows, ...]
    slots: np.ndarray | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))


class Scheduler:
    """Continuous batching of step requests for one graph of one model version."""

    def __init__(self, graph: Graph, pool: StatePool | None) -> None:
        self.graph, self.pool, self.config = graph, pool, graph.config
        self.queue: asyncio.Queue[StepRequest] = asyncio.Queue(self.config.max_queue)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{graph.model.name}-{graph.name}")
        graph.queues.append(self.queue.qsize)
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # kept: asyncio's look-up costs a getpid per step

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self._loop(), name=f"scheduler {self.graph.labels}")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, inputs: Arrays, slots: np.ndarray | None) -> Arrays:
        """The outputs of one step of ``inputs`` with the state of ``slots``, once its batch has run."""
        request = StepRequest(inputs, slots, self.loop.create_future())
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull:
            raise Overloaded(f"{self.graph.model.name}/{self.graph.name}: {self.config.max_queue} steps are queued"
                             ) from None
        return await request.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        slots_of = self.graph.slots
        while True:
            batch = await self._next_batch(loop)
            if not batch:
                continue
            slots = np.concatenate([r.slots for r in batch]) if self.pool else None
            if self.pool:
                slots_of.batch_started(slots)
            started = time.perf_counter()
            for request in batch:
                self.graph.metrics.queue_wait.labels(**self.graph.labels).observe(started - request.enqueued)
            try:
                results = await loop.run_in_executor(self.executor, self.run, batch, slots)
            except Exception as error:  # a failed run fails its requests, not the scheduler
                log.exception("%s: step failed", self.graph.labels)
                results = [error] * len(batch)
            finally:
                if self.pool:
                    slots_of.batch_done(slots)
            self.graph.record(sum(r.rows for r in batch), started)
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, Exception):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[StepRequest]:
        """The first ready request, then whatever arrives within ``max_wait_ms``, up to ``max_batch`` rows."""
        batch = [await self.queue.get()]
        rows = batch[0].rows
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while rows < self.config.max_batch:
            try:
                request = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:  # always so with max_wait_ms 0: no timer per step
                    break
                try:
                    request = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(request)
            rows += request.rows
        # A stream cancelled while queued (client gone, deadline) is dropped before the run.
        return [r for r in batch if not r.future.done()]

    def run(self, batch: list[StepRequest], slots: np.ndarray | None) -> list[Arrays]:
        """Off the event loop: gather, one ``run``, scatter the state, split the rest per request."""
        parts = [r.inputs for r in batch]
        feed = self.graph.gather(parts)
        if self.pool:
            feed |= {name: array[slots] for name, array in self.pool.arrays.items()}
        outputs = self.graph.run(feed)
        for output, state in self.graph.state_outputs.items():
            self.pool.arrays[state][slots] = outputs[output]
        return self.graph.split(outputs, parts)


async def gather_all(awaitables: Iterable[Awaitable[Result]]) -> list[Result]:
    """All results in order; on the first failure (or cancellation) every other one is cancelled and has ended (so
    its slots are free) before the error is raised. ``asyncio.gather`` would leave them running."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ModelRunner:
    """One model version: a ``Graph``, its state pool and a scheduler per graph."""

    def __init__(self, model: Model, config: Config, metrics: Metrics) -> None:
        self.model = model
        self.graphs = {name: Graph(model, name, config, metrics) for name in model.manifest.graphs}
        self.pools = {name: StatePool(g) for name, g in self.graphs.items() if g.state}
        self.schedulers = {name: Scheduler(g, self.pools.get(name)) for name, g in self.graphs.items()}
        self.metrics = metrics
        self.info = {"model": model.name, "version": str(model.version), "task": model.task or "generic",
                     "provider": ",".join(self.providers)}
        metrics.model_info.labels(**self.info).set(1)

    @property
    def providers(self) -> list[str]:
        """Where the graphs run: the first ONNX Runtime provider of each session."""
        return sorted({graph.session.get_providers()[0] for graph in self.graphs.values()})

    def warm_up(self) -> None:
        for graph in self.graphs.values():
            graph.warm_up()

    def start(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.start()

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.schedulers.values()))

    def unregister(self) -> None:
        """Remove this version from ``seqserve_model_info`` and its graphs' gauges (it is unloaded)."""
        self.metrics.forget(self.metrics.model_info, *self.info.values())
        for graph in self.graphs.values():
            graph.unregister()

    def open(self, graph: str, rows: int = 1) -> Lease:
        """State slots for one stream of ``graph``, set to their initial values (constants); a ``with`` block or
        ``release`` gives them back."""
        return self.state(graph, self.graphs[graph].slots.lease(rows), {})

    def state(self, graph: str, lease: Lease, sources: dict[str, Arrays]) -> Lease:
        """``lease``, its rows of ``graph`` set to their initial values (taken from ``sources``, the outputs of the
        graphs they start from)."""
        try:
            self.pools[graph].initialize(lease.rows, sources)
        except BaseException:
            lease.release()
            raise
        return lease

    async def run(self, graph: str, inputs: Arrays, slots: np.ndarray | None = None) -> Arrays:
        """One step of one stream: ``inputs`` (plain and context, ``[rows, ...]``) and its state ``slots``."""
        return await self.schedulers[graph].submit(inputs, slots)
