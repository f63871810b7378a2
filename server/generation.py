"""The generation loop: every open sequence of a step graph advances once per run, in the engine's own thread.

A per-step request (``engine.Scheduler``) costs each stream an asyncio round trip and a state
gather and scatter at every step. A sequence whose next input follows from its last output
(greedy decoding) needs none of that. A ``Generator`` keeps the running sequences of one graph as
one ``Batch`` in its own thread, in the shape of vLLM's engine loop:

    schedule()  decide what runs: drop the rows that finished or whose stream went away, admit
                waiting sequences up to ``max_batch`` (their source graphs, the encoder, run once
                for all of them: the prefill). Joining rows take the places of the rows that left,
                in place; the batch is re-gathered only when it grows or a source is longer than
                its padding.
    step()      one ONNX Runtime run over the batch.
    update()    the task's ``pick`` chooses every row's next input and result; all of the step's
                results go to the event loop in one call; finished rows are marked for the next
                ``schedule()``.

State and context are ONNX Runtime values bound with IO binding on the session's device. On CUDA
a step's new state is the next step's input without leaving the device while the batch keeps its
rows; only the plain inputs and the outputs that ``pick`` reads (``reads``) cross to the host.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from server.graph import Arrays, Graph, Lease, initial_state

log = logging.getLogger(__name__)

Pick = Callable[[Arrays, np.ndarray, np.ndarray], tuple[Arrays, list[Any], np.ndarray]]
"""``pick(outputs read to the host, steps taken before this one, step limits)``, one row per sequence,
returns the next step's plain inputs, one result per row (``None``: nothing to emit) and which rows
are done."""

END = object()  # after a sequence's last result


@dataclass(eq=False)
class Sequence:
    """One stream's generation: where it starts, and the queue its results arrive in."""

    sources: dict[str, Arrays]  # the inputs (one row) of each graph that its initial state and context come from
    inputs: Arrays  # the first step's plain inputs, one row
    limit: int  # steps at most
    lease: Lease  # its stream slot, given back as soon as its last result is out (its client may read it later)
    results: asyncio.Queue = field(default_factory=asyncio.Queue)  # lists of results (the last: END or an error)
    opened: float = field(default_factory=time.perf_counter)
    closed: bool = False  # the stream went away: the loop drops the row before its next step
    held: list[Any] = field(default_factory=list)  # results delivered, not yet handed to the stream
    hold: int = 1  # results handed to the stream at once (after the first): one wake-up for that many
    flushed: bool = False  # the first result was handed over

    async def chunks(self, most: int, fill: bool = False) -> AsyncIterator[list[Any]]:
        """The results in order, up to ``most`` per list: whatever has arrived, or with ``fill`` (after the
        first result) ``most`` at a time, held back until there are that many or the sequence has ended."""
        self.hold = most if fill else 1
        first, items = fill, []  # with ``fill``: the first result alone, then ``most`` a list, whenever they come
        while True:
            items += await self.results.get()
            while not self.results.empty() and not ended(items):
                items += self.results.get_nowait()
            last = items.pop() if ended(items) else None
            if first and items:
                first = False
                yield items[:1]
                del items[:1]
            whole = len(items) if last is not None or not fill else len(items) - len(items) % most
            for start in range(0, whole, most):
                yield items[start : start + most]
            del items[:whole]
            if isinstance(last, Exception):
                raise last
            if last is END:
                return


@dataclass(eq=False)
class Batch:
    """Running sequences, row by row, as TGI's batches: ``replace`` swaps rows in place, ``concatenate`` joins
    batches.

    ``host`` holds each row's plain inputs and context (and its state while the batch is being
    re-gathered); ``bound`` holds the state and context on the session's device while it runs.
    """

    sequences: list[Sequence]
    host: Arrays
    steps: np.ndarray  # steps taken
    limits: np.ndarray  # steps allowed
    bound: dict[str, ort.OrtValue] = field(default_factory=dict)
    done: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.done = np.zeros(len(self.sequences), dtype=bool)

    def __len__(self) -> int:
        return len(self.sequences)

    def replace(self, removed: list[int], joining: Batch | None, graph: Graph) -> Batch:
        """This batch without the rows ``removed`` (in order) and with the rows of ``joining``, re-gathered only in
        part: a joining row that fits the batch's padded shapes is written in place of a removed row, the removed
        rows left over are filled with the batch's last rows, and only joining rows left over (a batch that
        grows, a longer source) are gathered with the rest. The state comes back from the device first."""
        rows = self.host | {name: self.bound[name].numpy() for name in graph.state_outputs.values()}
        sequences, steps, limits = list(self.sequences), self.steps.copy(), self.limits.copy()
        incoming = joining.host if joining is not None else {}
        fits = [j for j in range(len(joining or ())) if all(
            all(a <= b for a, b in zip(incoming[name].shape[1:], array.shape[1:], strict=True))
            for name, array in rows.items())]
        for slot, j in zip(removed, fits, strict=False):  # as many as both have
            for name, array in rows.items():
                part = incoming[name][j]
                if part.shape != array.shape[1:]:
                    array[slot] = graph.context.get(name, graph.pad)
                array[(slot, *(slice(0, n) for n in part.shape))] = part
            sequences[slot], steps[slot], limits[slot] = joining.sequences[j], joining.steps[j], joining.limits[j]
        placed = min(len(removed), len(fits))
        holes = removed[placed:]
        size = len(self) - len(holes)
        targets = [h for h in holes if h < size]
        vacated = set(holes)
        movers = [i for i in range(size, len(self)) if i not in vacated]
        for target, mover in zip(targets, movers, strict=True):
            sequences[target] = sequences[mover]
        if targets:
            for array in (*rows.values(), steps, limits):
                array[targets] = array[movers]
        batch = Batch(sequences[:size], {name: array[:size] for name, array in rows.items()}, steps[:size],
                      limits[:size])
        written = set(fits[:placed])
        left = [j for j in range(len(joining or ())) if j not in written]
        return Batch.concatenate([batch, joining.take(left)], graph) if left else batch

    def take(self, rows: list[int]) -> Batch:
        """The rows ``rows`` of a batch whose state is still on the host (before ``bind``)."""
        return Batch([self.sequences[i] for i in rows], {name: array[rows] for name, array in self.host.items()},
                     self.steps[rows], self.limits[rows])

    @staticmethod
    def concatenate(batches: list[Batch], graph: Graph) -> Batch:
        """One batch of every row of ``batches``, context padded to the longest."""
        host = graph.gather([b.host for b in batches])
        return Batch([s for b in batches for s in b.sequences], host, np.concatenate([b.steps for b in batches]),
                     np.concatenate([b.limits for b in batches]))

    def bind(self, graph: Graph) -> None:
        """State and context to the device; the state leaves ``host`` (the device holds the live copy)."""
        arrays = {name: self.host.pop(name) for name in graph.state_outputs.values()}
        arrays |= {name: self.host[name] for name in graph.context}
        for name, array in arrays.items():
            self.bound[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), graph.device, 0)


class Generator:
    """Greedy-style generation over one graph of one model version; see the module docstring.

    ``sources`` are the graphs its initial state and context come from (the manifest's ``initial``
    and ``context.from``: the encoder for translation). A sequence holds one of the graph's stream
    slots (leased by the caller, like the per-step path's streams) until it has been decoded.
    """

    def __init__(self, graph: Graph, sources: dict[str, Graph], reads: list[str], pick: Pick) -> None:
        self.graph, self.sources, self.reads, self.pick = graph, sources, reads, pick
        self.joining: queue.SimpleQueue[Sequence | None] = queue.SimpleQueue()
        self.waiting: list[Sequence] = []  # opened, not yet in the batch (it has ``max_batch`` rows)
        graph.queues.append(lambda: self.joining.qsize() + len(self.waiting))
        self.thread = threading.Thread(target=self._loop, name=f"generate-{graph.model.name}-{graph.name}",
                                       daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread.start()

    async def stop(self) -> None:
        self.joining.put(None)
        await asyncio.to_thread(self.thread.join)

    @contextmanager
    def open(self, sources: dict[str, Arrays], inputs: Arrays, limit: int, lease: Lease) -> Iterator[Sequence]:
        """Start a sequence from its source graphs' inputs (``{graph: {input: one row}}``); it holds its stream slot
        (``lease``, one row) until its last result has arrived or the block ends, however it ends."""
        sequence = Sequence(sources, inputs, limit, lease)
        try:
            self.joining.put(sequence)
            yield sequence
        finally:
            sequence.closed = True
            lease.release()

    def _loop(self) -> None:
        batch: Batch | None = None
        while True:
            if not self._receive(block=batch is None and not self.waiting):
                self._fail(batch, self.waiting, RuntimeError("the server is stopping"))
                return
            started, waiting = time.perf_counter(), list(self.waiting)
            try:
                batch = self.schedule(batch)
                if batch is not None:
                    self.update(batch, self.step(batch), started)
            except Exception as error:  # a failed step fails the sequences it touched, not the loop
                log.exception("%s: generation step failed", self.graph.labels)
                self._fail(batch, waiting, error)
                batch, self.waiting = None, []

    def _receive(self, block: bool) -> bool:
        """Move newly opened sequences to ``waiting`` (waiting for one when idle); False once stopped."""
        try:
            if block:
                self.waiting.append(self.joining.get())
            while True:
                self.waiting.append(self.joining.get_nowait())
        except queue.Empty:
            pass
        if None in self.waiting:
            self.waiting = [s for s in self.waiting if s is not None]
            return False
        return True

    def schedule(self, batch: Batch | None) -> Batch | None:
        """The batch to run: without its finished or abandoned rows, filled up to ``max_batch`` from
        ``waiting``. When its rows change it is re-gathered only in part (``Batch.replace``)."""
        self.waiting = [s for s in self.waiting if not s.closed]
        removed = [] if batch is None else [i for i, s in enumerate(batch.sequences) if batch.done[i] or s.closed]
        room = max(self.graph.config.max_batch - (0 if batch is None else len(batch) - len(removed)), 0)
        joined, self.waiting = self.waiting[:room], self.waiting[room:]
        if batch is not None and not joined and not removed:
            return batch
        joining = self.prefill(joined) if joined else None
        merged = batch.replace(removed, joining, self.graph) if batch is not None and len(removed) < len(batch) \
            else joining
        if merged is not None:
            merged.bind(self.graph)
        return merged

    def prefill(self, joined: list[Sequence]) -> Batch:
        """The joining sequences as a batch: one batched run of each source graph gives each one's
        initial state and context (context cut to the sequence's own length)."""
        now = time.perf_counter()
        for sequence in joined:
            self.graph.metrics.queue_wait.labels(**self.graph.labels).observe(now - sequence.opened)
        outputs = {name: graph.run_parts([s.sources[name] for s in joined]) for name, graph in self.sources.items()}
        rows = []
        for index, sequence in enumerate(joined):
            sources = {name: out[index] for name, out in outputs.items()}
            state = {spec.input: initial_state(spec, sources) for spec in self.graph.state}
            rows.append(state | self.graph.stream_context(sources) | sequence.inputs)
        return Batch(joined, self.graph.gather(rows), np.zeros(len(joined), dtype=np.int64),
                     np.array([s.limit for s in joined], dtype=np.int64))

    def step(self, batch: Batch) -> dict[str, ort.OrtValue]:
        """One run over the batch; the new state stays on the device, ``reads`` come to the host."""
        binding = self.graph.session.io_binding()
        for name, value in batch.bound.items():
            binding.bind_ortvalue_input(name, value)
        for name, array in batch.host.items():
            if name not in self.graph.context:
                binding.bind_cpu_input(name, array)
        names = self.graph.output_names
        for name in names:
            binding.bind_output(name, "cpu" if name in self.reads else self.graph.device)
        self.graph.session.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs(), strict=True))

    def update(self, batch: Batch, outputs: dict[str, ort.OrtValue], started: float) -> None:
        """Apply a step's outputs: the new state, every row's next input and result, finished rows."""
        batch.bound |= {state: outputs[output] for output, state in self.graph.state_outputs.items()}
        inputs, results, batch.done = self.pick({n: outputs[n].numpy() for n in self.reads}, batch.steps,
                                                batch.limits)
        batch.host |= inputs
        batch.steps += 1
        self.graph.record(len(batch), started)
        items = [(s, r) for s, r in zip(batch.sequences, results, strict=True) if r is not None]
        items += [(s, END) for s, done in zip(batch.sequences, batch.done.tolist(), strict=True) if done]
        self.loop.call_soon_threadsafe(deliver, items)

    def _fail(self, batch: Batch | None, others: list[Sequence], error: Exception) -> None:
        """Every sequence of ``batch`` and ``others`` ends with ``error``."""
        sequences = (batch.sequences if batch else []) + others
        self.loop.call_soon_threadsafe(deliver, [(s, error) for s in sequences])


def ended(items: list[Any]) -> bool:
    """The list ends with a sequence's last result: its end or an error."""
    return bool(items) and (items[-1] is END or isinstance(items[-1], Exception))


def deliver(items: list[tuple[Sequence, Any]]) -> None:
    """On the event loop: each result to its sequence, unless its stream is gone, in lists of the sequence's
    ``hold`` (the first result, and the last, at once), so that its stream wakes once per list. A sequence's last
    result (its end or an error) gives its slot back: what is left to send is the stream's business."""
    for sequence, item in items:
        last = item is END or isinstance(item, Exception)
        if last:
            sequence.lease.release()
        if not sequence.closed:
            sequence.held.append(item)
            if last or len(sequence.held) >= sequence.hold or not sequence.flushed:
                sequence.results.put_nowait(sequence.held)
                sequence.held, sequence.flushed = [], True
