"""Sequences with implicit state, as Triton's sequence batcher keeps them.

A request with ``parameters["sequence_id"]`` (an integer or a string; 0 and "" mean none) belongs to
a sequence of its model version. ``sequence_start`` opens it (the task adapter's stream: state
slots, the same ones ``seqserve.v1`` streams use); ``sequence_end`` closes it after that request.
Requests of one sequence run in the order they arrived, one at a time. The errors are Triton's:
a request of an id that is not open must carry START; an id still open may not START again.

A sequence ends, and its slots are freed, at its END request, after ``sequence_idle_timeout_s``
without a request (logged, counted as ``idle_timeout``), when the ``ModelStreamInfer`` stream that
started it ends (counted as ``cancelled``: a client that went away), when a request of it fails inside
the server (``error``) or is cancelled, and when the server stops. Each end is counted in
``seqserve_sessions_ended_total`` and ``seqserve_active_streams`` returns to zero.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from server.errors import InputError
from server.metrics import Metrics
from server.timeouts import Timeouts

log = logging.getLogger(__name__)

Key = tuple[str, int, int | str]  # model name, version, sequence id
T = TypeVar("T")


def describe(key: Key) -> str:
    name, _, sequence_id = key
    return f"sequence {sequence_id} to model {name!r}"


@dataclass(eq=False, slots=True)
class Sequence:
    """An open sequence. An idle one holds only what it needs, its state slots among them: no finished request's
    event, no exit stack (``bench/idle_sessions.py --protocol kserve``)."""

    key: Key
    owner: object | None  # the stream that started it (None: ModelInfer)
    labels: dict[str, str]  # model, method (the one that started it), protocol
    target: Any = None  # what serves it (the model version and its endpoint): hot reload leaves it there
    context: AbstractContextManager[Any] | None = None  # the adapter's stream (state slots), entered
    state: Any = None
    opened: bool = False  # the START request opened the adapter's stream
    closed: bool = False  # the adapter's stream was exited
    ended: str | None = None  # why it ended
    pending: int = 0  # admitted requests that have not finished
    last: asyncio.Event | None = None  # set when the request admitted last has finished; None: none is running


@dataclass
class Turn:
    """One admitted request of a sequence: it runs once the one before it has finished."""

    sequence: Sequence
    before: asyncio.Event | None
    done: asyncio.Event
    end: bool


class Sequences:
    """Every open sequence of every model, by key; see the module docstring."""

    def __init__(self, metrics: Metrics, idle_timeout: float) -> None:
        self.metrics, self.idle_timeout = metrics, idle_timeout
        self.open: dict[Key, Sequence] = {}
        self.idle: Timeouts[Sequence] = Timeouts(idle_timeout, self._expire)  # those no request is running for
        self.labels: dict[tuple[str, ...], dict[str, str]] = {}  # one dict of each set of labels, not one a sequence

    def target(self, name: str, version: str, sequence_id: int | str) -> Any:
        """The ``target`` of the open sequence ``sequence_id`` of model ``name`` at ``version`` (empty: any
        version, the newest if several have one), or ``None``: a sequence stays on the version it started on."""
        found = [(key[1], sequence.target) for key, sequence in self.open.items()
                 if key[0] == name and key[2] == sequence_id and (not version or str(key[1]) == version)]
        return max(found, key=lambda pair: pair[0])[1] if found else None

    def admit(self, key: Key, start: bool, end: bool, owner: object | None, labels: dict[str, str],
              target: Any = None) -> Turn:
        """Take a request in arrival order (no ``await`` between arrival and this call)."""
        sequence = self.open.get(key)
        if start and sequence is not None:
            raise InputError(f"inference request for {describe(key)} has a conflict: the sequence is still open (it "
                             "did not end before this START); send sequence_end first or use another sequence_id")
        if not start and sequence is None:
            raise InputError(f"inference request for {describe(key)} must specify the START flag on the first "
                             "request of the sequence")
        if start:
            labels = self.labels.setdefault(tuple(labels.values()), labels)
            sequence = self.open[key] = Sequence(key, owner, labels, target)
        if end:
            del self.open[key]  # the id may START again at once; this sequence closes after its last request
        self.idle.disarm(sequence)
        turn = Turn(sequence, sequence.last, asyncio.Event(), end)
        sequence.last = turn.done
        sequence.pending += 1
        return turn

    async def run(self, turn: Turn, opener: Callable[[], AbstractContextManager[Any]],
                  step: Callable[[Any, bool], Awaitable[T]]) -> T:
        """Run ``step(state, first)`` once the requests before it have finished; the first request opens the
        state with ``opener``. A client error (``InputError``) leaves an open sequence as it was; a START
        that fails, a cancelled request and any other failure end it."""
        sequence, outcome = turn.sequence, "error"
        try:
            if turn.before is not None:
                await turn.before.wait()
            if sequence.ended:
                raise InputError(f"{describe(sequence.key)} has ended ({sequence.ended}): start it again with "
                                 "sequence_start")
            first = not sequence.opened
            if first:
                context = opener()
                sequence.state = context.__enter__()
                sequence.context, sequence.opened = context, True
                self.metrics.active_streams.labels(**sequence.labels).inc()
            result = await step(sequence.state, first)
            outcome = "ok"
            return result
        except InputError:
            outcome = "ok" if sequence.opened else "error"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._finished(turn)
            if outcome != "ok":
                self.end(sequence, outcome)
            elif turn.end or sequence.ended:
                self.end(sequence, "completed")  # (an earlier reason stands)
            elif sequence.pending == 0:
                self.idle.arm(sequence)

    def abandon(self, turn: Turn) -> None:
        """A request that was admitted but never ran (its stream went away first): it ends its sequence."""
        if not turn.done.is_set():
            self._finished(turn)
            self.end(turn.sequence, "cancelled")

    @staticmethod
    def _finished(turn: Turn) -> None:
        """``turn`` has finished: the next request need not wait, and once none is running, none waits at all."""
        turn.sequence.pending -= 1
        turn.done.set()
        if turn.sequence.pending == 0:
            turn.sequence.last = None

    def _expire(self, sequence: Sequence) -> None:
        log.warning("%s: no request for %g s (sequence_idle_timeout_s), ending it and freeing its state",
                    describe(sequence.key), self.idle_timeout)
        self.end(sequence, "idle_timeout")

    def end(self, sequence: Sequence, reason: str) -> None:
        """End ``sequence`` for ``reason``: at once, or after its requests in flight have finished."""
        if not sequence.ended:
            sequence.ended = reason
            if self.open.get(sequence.key) is sequence:
                del self.open[sequence.key]
            self.idle.disarm(sequence)
        if sequence.pending or sequence.closed:
            return
        sequence.closed = True
        if sequence.context is not None:
            context, sequence.context = sequence.context, None
            context.__exit__(None, None, None)
        if sequence.opened:
            self.metrics.active_streams.labels(**sequence.labels).dec()
            self.metrics.sessions_ended.labels(**sequence.labels, reason=sequence.ended).inc()

    def end_owned(self, owner: object, reason: str) -> None:
        """End every sequence that ``owner`` (a stream) started."""
        for sequence in [s for s in self.open.values() if s.owner is owner]:
            self.end(sequence, reason)

    def end_all(self, reason: str) -> None:
        for sequence in list(self.open.values()):
            self.end(sequence, reason)
        self.idle.cancel()
