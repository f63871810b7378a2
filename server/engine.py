"""The generic engine: state slots and one batching scheduler per model graph.

Nothing here knows a task. A graph's inputs are split by the manifest into state (rows of
preallocated arrays, paired with the outputs that replace them), context (per-stream constants,
padded per batch) and plain inputs (given with each step). A step request carries one or more
rows of one stream; the scheduler gathers ready requests up to ``max_batch`` rows, waiting at
most ``max_wait_ms`` after the first, runs ONNX Runtime once in the graph's own thread (never
on the event loop), scatters the new state back to the slots and resolves each request's future
with its rows of the other outputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from server.config import Config
from server.metrics import Metrics
from server.repository import Model, load_repository

if TYPE_CHECKING:
    from server.generation import Generator

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


class Overloaded(RuntimeError):
    """No free state slot or a full queue: the client should retry later (RESOURCE_EXHAUSTED)."""


def providers(config: Config) -> list[str | tuple[str, dict[str, str]]]:
    """The configured providers; CUDA without TF32 unless ``cuda_tf32`` (see ``Config``)."""
    if config.providers != "auto":
        names = [p.strip() for p in config.providers.split(",") if p.strip()]
    else:
        available = ort.get_available_providers()
        names = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    cuda = {"use_tf32": "1" if config.cuda_tf32 else "0"}
    return [(name, cuda) if name == "CUDAExecutionProvider" else name for name in names]


def session_device(session: ort.InferenceSession) -> str:
    """Where the session's tensors live: ``cuda`` when its first provider is CUDA, else ``cpu``."""
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def session_factory(config: Config):
    """ONNX Runtime sessions tuned for small recurrent steps (see docs/server.md)."""

    def make(path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.ort_spinning else "0")
        options.inter_op_num_threads = config.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), options, providers=providers(config))

    return make


def initial_value(spec: dict[str, Any], sources: dict[str, Arrays] | None) -> Any:
    """A state's ``initial``: a number, or a row of another graph's output (``sources[graph][output]``)."""
    initial = spec["initial"]
    return sources[initial["graph"]][initial["output"]] if isinstance(initial, dict) else initial


def stream_context(model: Model, graph: str, sources: dict[str, Arrays]) -> Arrays:
    """A stream's context tensors for ``graph``, taken from other graphs' outputs (one row each)."""
    return {c["input"]: sources[c["from"]["graph"]][c["from"]["output"]][0] for c in model.context(graph)}


class StatePool:
    """Every state tensor of one graph as a ``[max_streams, *shape]`` array; a stream owns rows.

    A row that is part of a running batch is released only when that batch has written its
    new state back, so a new stream never receives a row that a late scatter overwrites.
    """

    def __init__(self, specs: list[dict[str, Any]], capacity: int) -> None:
        self.specs = specs
        self.arrays = {s["input"]: np.zeros((capacity, *s["shape"]), dtype=s["dtype"]) for s in specs}
        self.free = list(range(capacity - 1, -1, -1))
        self.running: set[int] = set()
        self.deferred: list[int] = []

    def acquire(self, rows: int) -> np.ndarray:
        """``rows`` free slots, or ``Overloaded``: the graph's limit on open streams (``max_streams``)."""
        if len(self.free) < rows:
            raise Overloaded(f"all {len(self.arrays[self.specs[0]['input']])} state slots are in use")
        return np.array([self.free.pop() for _ in range(rows)], dtype=np.int64)

    def initialize(self, slots: np.ndarray, sources: dict[str, Arrays] | None = None) -> None:
        """Set each state of ``slots`` to its ``initial`` value."""
        for spec in self.specs:
            self.arrays[spec["input"]][slots] = initial_value(spec, sources)

    def release(self, slots: np.ndarray) -> None:
        for slot in slots.tolist():
            (self.deferred if slot in self.running else self.free).append(slot)

    def batch_done(self, slots: np.ndarray) -> None:
        self.running.difference_update(slots.tolist())
        self.free.extend(s for s in self.deferred if s not in self.running)
        self.deferred = [s for s in self.deferred if s in self.running]

    def reorder(self, slots: np.ndarray, parents: np.ndarray) -> None:
        """Beam search: row ``i`` of ``slots`` takes the state of row ``parents[i]``."""
        for array in self.arrays.values():
            array[slots] = array[slots[parents]]

    def snapshot(self, slots: np.ndarray) -> Arrays:
        return {name: array[slots].copy() for name, array in self.arrays.items()}

    def restore(self, slots: np.ndarray, saved: Arrays) -> None:
        for name, array in self.arrays.items():
            array[slots] = saved[name]

    @property
    def in_use(self) -> int:
        return len(next(iter(self.arrays.values()))) - len(self.free)


@dataclass
class StepRequest:
    inputs: Arrays  # plain inputs, each [rows, ...]
    rows: int
    slots: np.ndarray | None = None
    context: Arrays | None = None  # one per-stream tensor per context input, repeated over the rows
    # None when the caller runs the batch itself (``GraphScheduler.run``) instead of awaiting it
    future: asyncio.Future | None = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    enqueued: float = field(default_factory=time.perf_counter)


def stack(parts: list[np.ndarray], pad: Any) -> np.ndarray:
    """Concatenate along axis 0, padding the other axes to the largest part with ``pad``."""
    if len(parts) == 1:
        return parts[0]
    shape = np.max([p.shape for p in parts], axis=0)
    if all(tuple(p.shape[1:]) == tuple(shape[1:]) for p in parts):
        return np.concatenate(parts)
    out = np.full((sum(len(p) for p in parts), *shape[1:]), pad, dtype=parts[0].dtype)
    start = 0
    for p in parts:
        out[(slice(start, start + len(p)), *(slice(0, n) for n in p.shape[1:]))] = p
        start += len(p)
    return out


class GraphScheduler:
    """Continuous batching for one graph of one model version."""

    def __init__(self, model: Model, graph: str, pool: StatePool | None, config: Config, metrics: Metrics) -> None:
        self.model, self.graph, self.pool, self.config = model, graph, pool, config
        self.session = model.sessions[graph]
        self.labels = {"model": model.name, "graph": graph}
        self.metrics = metrics
        declared = model.manifest["graphs"][graph]
        self.input_shapes = {t["name"]: t["shape"] for t in declared["inputs"]}
        self.output_shapes = {t["name"]: t["shape"] for t in declared["outputs"]}
        self.state_outputs = {s["output"]: s["input"] for s in model.state(graph)}
        self.context = {c["input"]: c.get("pad_value", 0) for c in model.context(graph)}
        self.pad = model.manifest.get("preprocessing", {}).get("pad_id", 0)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.queue: asyncio.Queue[StepRequest] = asyncio.Queue(config.max_queue)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{model.name}-{graph}")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"scheduler {self.labels}")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, request: StepRequest) -> Arrays:
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull:
            raise Overloaded(f"{self.model.name}/{self.graph}: {self.config.max_queue} steps are queued") from None
        return await request.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(loop)
            if not batch:
                continue
            slots = np.concatenate([r.slots for r in batch]) if self.pool else None
            if self.pool:
                self.pool.running.update(slots.tolist())
            started = time.perf_counter()
            for request in batch:
                self.metrics.queue_wait.labels(**self.labels).observe(started - request.enqueued)
            try:
                results = await loop.run_in_executor(self.executor, self.run, batch, slots)
            except Exception as error:  # a failed run fails its requests, not the scheduler
                log.exception("%s: step failed", self.labels)
                results = [error] * len(batch)
            finally:
                if self.pool:
                    self.pool.batch_done(slots)
            self.record(sum(r.rows for r in batch), started)
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

    def record(self, rows: int, started: float) -> None:
        """The metrics of one batched step of ``rows`` rows that started at ``started``."""
        self.metrics.batch_size.labels(**self.labels).observe(rows)
        self.metrics.step_duration.labels(**self.labels).observe(time.perf_counter() - started)

    def run(self, batch: list[StepRequest], slots: np.ndarray | None) -> list[Arrays]:
        """Off the event loop: gather, one ``run``, scatter the state, split the rest per request."""
        feed = {name: stack([r.inputs[name] for r in batch], self.pad) for name in batch[0].inputs}
        if self.pool:
            feed |= {name: array[slots] for name, array in self.pool.arrays.items()}
        for name, pad in self.context.items():
            feed[name] = stack([np.repeat(r.context[name][None], r.rows, axis=0) for r in batch], pad)
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
        for output, state in self.state_outputs.items():
            self.pool.arrays[state][slots] = outputs[output]
        results, start = [], 0
        for request in batch:
            sizes = self._sizes(request)
            rows = slice(start, start + request.rows)
            results.append({name: self._cut(value[rows], self.output_shapes[name], sizes)
                            for name, value in outputs.items() if name not in self.state_outputs})
            start += request.rows
        return results

    def _sizes(self, request: StepRequest) -> dict[str, int]:
        """The request's own length of every symbolic axis (``tokens``, ``src``) of its inputs."""
        sizes: dict[str, int] = {}
        tensors = {**request.inputs, **{k: v[None] for k, v in (request.context or {}).items()}}
        for name, value in tensors.items():
            for axis, dim in enumerate(self.input_shapes[name][1:], start=1):
                if isinstance(dim, str):
                    sizes[dim] = value.shape[axis]
        return sizes

    @staticmethod
    def _cut(value: np.ndarray, shape: list, sizes: dict[str, int]) -> np.ndarray:
        """Undo the batch padding on outputs whose axes share a symbol with a padded input."""
        index = tuple(slice(0, sizes[d]) if isinstance(d, str) and d in sizes else slice(None) for d in shape[1:])
        return value[(slice(None), *index)]

    def warm_up(self) -> None:
        """One batch-1 run with neutral inputs, so the first request does not pay for allocation."""
        feed = {}
        for arg in self.model.manifest["graphs"][self.graph]["inputs"]:
            shape = [1] + [d if isinstance(d, int) else 1 for d in arg["shape"][1:]]
            feed[arg["name"]] = np.ones(shape, dtype=arg["dtype"])
        self.session.run(None, feed)


class ModelRunner:
    """One model version: its state pools and a scheduler per graph."""

    def __init__(self, model: Model, config: Config, metrics: Metrics) -> None:
        self.model = model
        graphs = model.manifest["graphs"]
        self.pools = {g: StatePool(model.state(g), config.max_streams) for g in graphs if model.state(g)}
        self.schedulers = {g: GraphScheduler(model, g, self.pools.get(g), config, metrics) for g in graphs}
        self.generators: list[Generator] = []  # added by the task modules that decode in the engine

    def warm_up(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.warm_up()

    def start(self) -> None:
        for scheduler in [*self.schedulers.values(), *self.generators]:
            scheduler.start()

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in [*self.schedulers.values(), *self.generators]))

    @contextmanager
    def open(self, graph: str, rows: int = 1, sources: dict[str, Arrays] | None = None) -> Iterator[np.ndarray]:
        """State slots for one stream of ``graph``, released when the block ends however it ends."""
        pool = self.pools[graph]
        slots = pool.acquire(rows)
        try:
            pool.initialize(slots, sources)
            yield slots
        finally:
            pool.release(slots)

    def context(self, graph: str, sources: dict[str, Arrays]) -> Arrays:
        return stream_context(self.model, graph, sources)

    async def run(self, graph: str, inputs: Arrays, slots: np.ndarray | None = None,
                  context: Arrays | None = None) -> Arrays:
        rows = len(next(iter(inputs.values())))
        return await self.schedulers[graph].submit(StepRequest(inputs, rows, slots, context))


def load_runners(config: Config, metrics: Metrics) -> dict[str, dict[int, ModelRunner]]:
    models = load_repository(Path(config.models), session_factory(config))
    return {name: {v: ModelRunner(m, config, metrics) for v, m in vs.items()} for name, vs in models.items()}
