"""Generation in the engine's own thread: every open sequence of a step graph advances once per run.

A per-step request (``engine.GraphScheduler``) costs each stream an asyncio round trip, a state
gather and scatter and a re-stacked context at every step. A sequence whose next input follows
from its last output (greedy decoding) needs none of that. A ``Generator`` keeps the running
sequences of one graph as one batch in its own thread, in the spirit of vLLM's engine loop:

    take the sequences that joined, drop those that ended or whose stream went away (the batch is
    re-gathered only then); run one step; let the task's ``pick`` choose every row's next input
    and result; hand all of the step's results to the event loop in one call.

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

from server.engine import Arrays, ModelRunner, StepRequest, initial_value, session_device, stack, stream_context

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
    results: asyncio.Queue = field(default_factory=asyncio.Queue)
    opened: float = field(default_factory=time.perf_counter)
    closed: bool = False  # the stream went away: the loop drops the row before its next step

    async def chunks(self, most: int) -> AsyncIterator[list[Any]]:
        """The results in order, up to ``most`` per list: whatever has arrived, never held back to fill one."""
        while True:
            chunk, ended = [], False
            item = await self.results.get()
            while True:
                if isinstance(item, Exception):
                    raise item
                if item is END:
                    ended = True
                    break
                chunk.append(item)
                if len(chunk) >= most or self.results.empty():
                    break
                item = self.results.get_nowait()
            if chunk:
                yield chunk
            if ended:
                return


@dataclass
class Batch:
    """The running sequences of a generator, row by row, with their inputs as the next step needs them."""

    sequences: list[Sequence]
    state: dict[str, ort.OrtValue]  # on the session's device
    context: dict[str, ort.OrtValue]  # on the session's device, padded
    host_context: Arrays  # the same, kept for re-gathering
    inputs: Arrays
    steps: np.ndarray
    limits: np.ndarray
    done: np.ndarray


class Generator:
    """Greedy-style generation over one graph of one model version; see the module docstring.

    A joining sequence first runs the graphs its initial state and context come from (the
    manifest's ``initial`` and ``context.from``, the encoder for translation), batched with the
    other sequences joining at that step, in this same thread: the prefill of a vLLM-style loop.
    """

    def __init__(self, runner: ModelRunner, graph: str, reads: list[str], pick: Pick) -> None:
        self.scheduler = runner.schedulers[graph]
        self.reads, self.pick = reads, pick
        self.session = self.scheduler.session
        self.device = session_device(self.session)
        self.specs = runner.model.state(graph)
        wired = [s["initial"]["graph"] for s in self.specs if isinstance(s["initial"], dict)]
        wired += [c["from"]["graph"] for c in runner.model.context(graph)]
        self.sources = {g: runner.schedulers[g] for g in dict.fromkeys(wired)}
        self.joining: queue.SimpleQueue[Sequence | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=f"generate-{runner.model.name}-{graph}", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread.start()

    async def stop(self) -> None:
        self.joining.put(None)
        await asyncio.to_thread(self.thread.join)

    @contextmanager
    def open(self, sources: dict[str, Arrays], inputs: Arrays, limit: int) -> Iterator[Sequence]:
        """Start a sequence from its source graphs' inputs (``{graph: {input: one row}}``); it holds one
        of the graph's stream slots until the block ends, however it ends."""
        sequence = Sequence(sources, inputs, limit)
        pool = self.scheduler.pool
        slots = pool.acquire(1)
        try:
            self.joining.put(sequence)
            yield sequence
        finally:
            sequence.closed = True
            pool.release(slots)

    def _loop(self) -> None:
        batch: Batch | None = None
        waiting: list[Sequence] = []  # opened, not yet in the batch (it has ``max_batch`` rows)
        while True:
            try:
                if batch is None and not waiting:
                    waiting.append(self.joining.get())
                while True:
                    waiting.append(self.joining.get_nowait())
            except queue.Empty:
                pass
            if None in waiting:  # stop
                self._fail(batch, [s for s in waiting if s], RuntimeError("the server is stopping"))
                return
            candidates = [s for s in waiting if not s.closed]
            started = time.perf_counter()
            try:
                batch, waiting = self._regather(batch, candidates)
                if batch is not None:
                    self._step(batch, started)
            except Exception as error:  # a failed step fails the sequences it touched, not the loop
                log.exception("%s: generation step failed", self.scheduler.labels)
                self._fail(batch, candidates, error)
                batch, waiting = None, []

    def _regather(self, batch: Batch | None, waiting: list[Sequence]) -> tuple[Batch | None, list[Sequence]]:
        """The batch without its finished or abandoned rows, filled up to ``max_batch`` from ``waiting``,
        and those still waiting. The batch is rebuilt only if it changed."""
        keep = [] if batch is None else [i for i, s in enumerate(batch.sequences) if not (batch.done[i] or s.closed)]
        room = max(self.scheduler.config.max_batch - len(keep), 0)
        joined, waiting = waiting[:room], waiting[room:]
        if batch is not None and not joined and len(keep) == len(batch.sequences):
            return batch, waiting
        sequences = ([batch.sequences[i] for i in keep] if batch else []) + joined
        if not sequences:
            return None, waiting
        now = time.perf_counter()
        for sequence in joined:
            self.scheduler.metrics.queue_wait.labels(**self.scheduler.labels).observe(now - sequence.opened)
        parts: dict[str, list[np.ndarray]] = {}  # every input's rows: kept ones first, then the joined
        if batch is not None and keep:
            host_state = {name: value.numpy() for name, value in batch.state.items()}
            for name, rows in (host_state | batch.host_context | batch.inputs).items():
                parts[name] = [rows[keep]]
        for sequence, rows in zip(joined, self._prefill(joined), strict=True):
            for name, row in (rows | sequence.inputs).items():
                parts.setdefault(name, []).append(row)
        pads = self.scheduler.context
        merged = {name: stack(rows, pads.get(name, self.scheduler.pad)) for name, rows in parts.items()}
        state = {s["input"]: merged.pop(s["input"]) for s in self.specs}
        context = {name: merged.pop(name) for name in self.scheduler.context}
        steps = [batch.steps[keep], batch.limits[keep]] if batch is not None else [np.zeros(0, np.int64)] * 2
        return Batch(
            sequences, self._to_device(state), self._to_device(context), context, merged,
            np.concatenate([steps[0], np.zeros(len(joined), dtype=np.int64)]),
            np.concatenate([steps[1], np.array([s.limit for s in joined], dtype=np.int64)]),
            np.zeros(len(sequences), dtype=bool),
        ), waiting

    def _prefill(self, joined: list[Sequence]) -> list[Arrays]:
        """One batched run of each source graph over the joining sequences; each one's initial
        state and context rows (context cut to the sequence's own length)."""
        if not joined:
            return []
        outputs: dict[str, list[Arrays]] = {}
        for graph, scheduler in self.sources.items():
            started = time.perf_counter()
            outputs[graph] = scheduler.run([StepRequest(s.sources[graph], 1, future=None) for s in joined], None)
            scheduler.record(len(joined), started)
        rows = []
        for index in range(len(joined)):
            sources = {graph: out[index] for graph, out in outputs.items()}
            state = {s["input"]: np.broadcast_to(initial_value(s, sources), (1, *s["shape"])).astype(s["dtype"])
                     for s in self.specs}
            context = stream_context(self.scheduler.model, self.scheduler.graph, sources)
            rows.append(state | {name: value[None] for name, value in context.items()})
        return rows

    def _to_device(self, arrays: Arrays) -> dict[str, ort.OrtValue]:
        return {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, 0) for n, a in arrays.items()}

    def _step(self, batch: Batch, started: float) -> None:
        """One run over the batch; the new state stays bound on the device, ``reads`` come to the host."""
        binding = self.session.io_binding()
        for name, value in (batch.state | batch.context).items():
            binding.bind_ortvalue_input(name, value)
        for name, array in batch.inputs.items():
            binding.bind_cpu_input(name, array)
        names = self.scheduler.output_names
        for name in names:
            binding.bind_output(name, "cpu" if name in self.reads else self.device)
        self.session.run_with_iobinding(binding)
        outputs = dict(zip(names, binding.get_outputs(), strict=True))
        batch.state = {state: outputs[output] for output, state in self.scheduler.state_outputs.items()}
        batch.inputs, results, batch.done = self.pick({n: outputs[n].numpy() for n in self.reads}, batch.steps,
                                                      batch.limits)
        batch.steps += 1
        self.scheduler.record(len(batch.sequences), started)
        items = [(s, r) for s, r in zip(batch.sequences, results, strict=True) if r is not None]
        items += [(s, END) for s, done in zip(batch.sequences, batch.done.tolist(), strict=True) if done]
        self.loop.call_soon_threadsafe(deliver, items)

    def _fail(self, batch: Batch | None, others: list[Sequence], error: Exception) -> None:
        """Every sequence of ``batch`` and ``others`` ends with ``error``."""
        sequences = (batch.sequences if batch else []) + others
        self.loop.call_soon_threadsafe(deliver, [(s, error) for s in sequences])


def deliver(items: list[tuple[Sequence, Any]]) -> None:
    """On the event loop: each result into its sequence's queue, unless its stream is gone."""
    for sequence, item in items:
        if not sequence.closed:
            sequence.results.put_nowait(item)
