"""One step graph of one model version: what both engine paths (``engine.Scheduler`` and
``generation.Generator``) need to know about it, and its stream slots.

A graph's inputs are split by the manifest into state (paired with the outputs that replace them),
context (per-stream constants, padded per batch) and plain inputs (given with each step). Requests
are gathered into one feed by stacking along the batch axis, padding the other axes; after a run,
each request's rows of the other outputs are cut back to its own lengths.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Self

import numpy as np

from contract.manifest import Reference, State
from contract.repository import Model, SessionFactory
from contract.sessions import session_device, step_sessions
from server.config import Config
from server.errors import Overloaded
from server.metrics import Metrics

Arrays = dict[str, np.ndarray]


def session_factory(config: Config) -> SessionFactory:
    """The server's ONNX Runtime sessions, as ``config`` says (``contract/sessions.py``)."""
    return step_sessions(config.intra_op_threads, config.inter_op_threads, config.ort_spinning, config.providers,
                         config.cuda_tf32)


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


def initial_state(spec: State, sources: dict[str, Arrays]) -> np.ndarray:
    """A state's ``initial`` for one stream as ``[1, *shape]``: a constant, or the row another graph produced."""
    value = sources[spec.initial.graph][spec.initial.output] if isinstance(spec.initial, Reference) else spec.initial
    return np.broadcast_to(value, (1, *spec.shape)).astype(spec.dtype)


class Slots:
    """Row numbers ``0 … capacity-1`` of a graph's streams: the limit on open streams (``max_streams``).

    A row that is part of a running batch is released only when that batch has written its new
    state back (``batch_done``), so a new stream never receives a row that a late scatter overwrites.
    ``owner`` names the model version and graph in errors.
    """

    def __init__(self, capacity: int, owner: str) -> None:
        self.capacity, self.owner = capacity, owner
        self.free = list(range(capacity - 1, -1, -1))
        self.running: set[int] = set()
        self.deferred: list[int] = []

    def acquire(self, rows: int) -> np.ndarray:
        if len(self.free) < rows:
            raise Overloaded(f"{self.owner}: {rows} stream slot{'s' if rows > 1 else ''} wanted, {len(self.free)} of "
                             f"{self.capacity} free: retry later, or raise max_streams")
        return np.array([self.free.pop() for _ in range(rows)], dtype=np.int64)

    def release(self, slots: np.ndarray) -> None:
        for slot in slots.tolist():
            (self.deferred if slot in self.running else self.free).append(slot)

    def lease(self, rows: int) -> Lease:
        return Lease(self, self.acquire(rows))

    def batch_started(self, slots: np.ndarray) -> None:
        self.running.update(slots.tolist())

    def batch_done(self, slots: np.ndarray) -> None:
        self.running.difference_update(slots.tolist())
        self.free.extend(s for s in self.deferred if s not in self.running)
        self.deferred = [s for s in self.deferred if s in self.running]

    @property
    def in_use(self) -> int:
        return self.capacity - len(self.free)


class Lease:
    """Rows taken from ``Slots`` at once, given back by ``release`` (once, however often it is called) or at the end
    of a ``with`` block. ``split`` hands them out to several streams, which may each give theirs back earlier."""

    __slots__ = ("parts", "released", "rows", "slots")

    def __init__(self, slots: Slots, rows: np.ndarray) -> None:
        self.slots, self.rows = slots, rows
        self.parts: list[Lease] = []
        self.released = False

    def split(self, count: int) -> list[Lease]:
        self.parts = [Lease(self.slots, rows) for rows in np.split(self.rows, count)]
        return self.parts

    def release(self) -> None:
        for part in self.parts:
            part.release()
        if not (self.parts or self.released):
            self.slots.release(self.rows)
        self.released = True

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Holding:
    """A stream that holds state slots (``lease``) from the start of its ``with`` block to its end, however it ends.

    A class and not a generator-based context manager, with ``__slots__`` in its subclasses, because an
    idle stream keeps it: about 350 bytes less per stream (``bench/idle_sessions.py``).
    """

    __slots__ = ("lease",)
    lease: Lease

    def take(self) -> Lease:
        """The stream's slots, at their initial values (``ModelRunner.open``)."""
        raise NotImplementedError

    @property
    def slots(self) -> np.ndarray:
        return self.lease.rows

    def __enter__(self) -> Self:
        self.lease = self.take()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lease.release()


class Graph:
    """One graph of one model version: its session, how its inputs are fed, its metrics and stream slots."""

    def __init__(self, model: Model, name: str, config: Config, metrics: Metrics) -> None:
        self.model, self.name, self.config, self.metrics = model, name, config, metrics
        self.session = model.sessions[name]
        self.device = session_device(self.session)
        self.labels = {"model": model.name, "graph": name}
        declared = model.manifest.graphs[name]
        self.inputs = declared.inputs
        self.input_shapes = {t.name: t.shape for t in declared.inputs}
        self.output_shapes = {t.name: t.shape for t in declared.outputs}
        self.state = model.manifest.state_of(name)
        self.state_outputs = {s.output: s.input for s in self.state}  # output -> the input it feeds next step
        self.context = {c.input: c.pad_value for c in model.manifest.context_of(name)}
        self.pad = getattr(model.manifest.preprocessing, "pad_id", 0)
        self.output_names = [o.name for o in self.session.get_outputs()]
        owner = f"model {model.name!r} version {model.version} ({name})"
        self.slots = Slots(config.max_streams, owner) if self.state else None
        # What waits for this graph's next batch: one size function per queue in front of it (the
        # scheduler's, a generation loop's), read when /metrics is scraped, like the slots.
        self.queues: list[Callable[[], int]] = []
        held = {**self.labels, "version": str(model.version)}
        metrics.read_when_scraped(metrics.queue_depth.labels(**held), lambda: sum(size() for size in self.queues))
        if self.slots:
            metrics.slots.labels(**held).set(self.slots.capacity)
            metrics.read_when_scraped(metrics.slots_in_use.labels(**held), lambda: self.slots.in_use)

    def unregister(self) -> None:
        """Remove this graph's gauges from ``/metrics`` (its model version is unloaded)."""
        gauges = [self.metrics.queue_depth, *([self.metrics.slots, self.metrics.slots_in_use] if self.slots else [])]
        for gauge in gauges:  # labels model, version, graph
            self.metrics.forget(gauge, self.model.name, str(self.model.version), self.name)

    def gather(self, parts: list[Arrays]) -> Arrays:
        """One feed from per-request inputs (each ``[rows, ...]``), padded with the context's or the ids' pad."""
        return {name: stack([part[name] for part in parts], self.context.get(name, self.pad)) for name in parts[0]}

    def run(self, feed: Arrays) -> Arrays:
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))

    def split(self, outputs: Arrays, parts: list[Arrays]) -> list[Arrays]:
        """Each part's rows of the outputs that are not state, cut to the part's own lengths of every
        symbolic axis (``tokens``, ``src``) that it shares with the inputs."""
        results, start = [], 0
        for part in parts:
            rows = len(next(iter(part.values())))
            sizes = {dim: value.shape[axis] for name, value in part.items()
                     for axis, dim in enumerate(self.input_shapes[name][1:], start=1) if isinstance(dim, str)}
            results.append({name: self._cut(value[start : start + rows], self.output_shapes[name], sizes)
                            for name, value in outputs.items() if name not in self.state_outputs})
            start += rows
        return results

    @staticmethod
    def _cut(value: np.ndarray, shape: tuple, sizes: dict[str, int]) -> np.ndarray:
        index = tuple(slice(0, sizes[d]) if isinstance(d, str) and d in sizes else slice(None) for d in shape[1:])
        return value[(slice(None), *index)]

    def run_parts(self, parts: list[Arrays]) -> list[Arrays]:
        """A stateless batched run over several requests' inputs; each one's outputs (used for prefill)."""
        started = time.perf_counter()
        results = self.split(self.run(self.gather(parts)), parts)
        self.record(sum(len(next(iter(p.values()))) for p in parts), started)
        return results

    def stream_context(self, sources: dict[str, Arrays]) -> Arrays:
        """A stream's context tensors (one row each, batch axis kept), taken from other graphs' outputs."""
        return {c.input: sources[c.source.graph][c.source.output]
                for c in self.model.manifest.context_of(self.name)}

    def record(self, rows: int, started: float) -> None:
        """The metrics of one batched step of ``rows`` rows that started at ``started``."""
        self.metrics.batch_size.labels(**self.labels).observe(rows)
        self.metrics.step_duration.labels(**self.labels).observe(time.perf_counter() - started)

    def warm_up(self) -> None:
        """One batch-1 run with neutral inputs, so the first request does not pay for allocation."""
        self.session.run(None, {t.name: np.ones([1] + [d if isinstance(d, int) else 1 for d in t.shape[1:]],
                                                 dtype=t.dtype) for t in self.inputs})
