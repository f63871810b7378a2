"""What every RPC shares: model lookup, input errors, status codes, per-call metrics and the calls the server ends
itself (shutdown, maximum age, stalled writes)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from server.config import Config
from server.errors import InputError, Overloaded, clip
from server.metrics import Metrics
from server.repository import Repository, Served
from server.timeouts import Timeouts

log = logging.getLogger(__name__)

SEQSERVE, KSERVE = "seqserve", "kserve"  # the ``protocol`` label: seqserve.v1, inference.GRPCInferenceService


class RequestError(Exception):
    """A request that cannot be served: aborts the call with ``code`` and a message naming the field."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def lookup(repository: Repository, name: str, version: int, field: str = "model.") -> Served:
    """The model ``name`` at ``version`` (0 = newest); NOT_FOUND names the ``field``. It lists nothing: which models
    exist is ``ListModels``' answer, to callers allowed to ask."""
    versions = repository.get(name)
    if versions is None:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"{field}name {clip(name)} is not loaded (ListModels lists them)")
    version = version or max(versions)
    if version not in versions:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"{field}version {version} of {clip(name)} is not loaded "
                                                      "(0 means the newest)")
    return versions[version]


def resolve(repository: Repository, ref: Any, task: str) -> Served:
    """The model for ``ref`` (a ``ModelRef``), which must serve ``task``."""
    served = lookup(repository, ref.name, ref.version)
    if served.model.task != task:
        kind = served.model.task or "task-less (generic stateful)"
        raise InputError(f"model.name {clip(ref.name)} is a {kind} model, this method needs a {task} model")
    return served


class Undecodable:
    """What a request that protobuf cannot parse (malformed bytes, invalid UTF-8 in a string) deserializes to, so
    that the call answers INVALID_ARGUMENT instead of gRPC answering UNKNOWN with a traceback."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer`` returning ``Undecodable`` instead of raising."""

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as error:  # protobuf's DecodeError, and whatever else a parser may raise
            return Undecodable(error)

    return deserialize


def decoded(message: Any, method: str) -> Any:
    """``message``, or a ``RequestError`` (INVALID_ARGUMENT, logged in one line) when it could not be parsed."""
    if isinstance(message, Undecodable):
        log.warning("%s: undecodable request: %s", method, message.error)
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the request could not be decoded: {clip(str(message.error), 120)}")
    return message


@dataclass(frozen=True, eq=False)
class Ending:
    """A call the server ends itself: the status its client gets and the reason counted in ``sessions_ended``."""

    reason: str
    code: grpc.StatusCode
    message: str
    freezes: bool = False  # a resumable stream is frozen into a resume token (``Call.resumable``), not cancelled


SHUTDOWN = Ending("shutdown", grpc.StatusCode.UNAVAILABLE, "the server is shutting down: retry the call",
                  freezes=True)


def idle(seconds: float) -> Ending:
    return Ending("idle_timeout", grpc.StatusCode.DEADLINE_EXCEEDED,
                  f"no message for {seconds:g} s (idle_timeout_s): the stream was ended")


def stalled(seconds: float) -> Ending:
    return Ending("write_timeout", grpc.StatusCode.DEADLINE_EXCEEDED,
                  f"the client read nothing for {seconds:g} s (write_timeout_s): the stream was ended")


def max_age(seconds: float) -> Ending:
    return Ending("max_age", grpc.StatusCode.DEADLINE_EXCEEDED,
                  f"the call was ended at max_stream_age_s ({seconds:g} s): open a new one", freezes=True)


TOKEN_FLUSH_S = 0.1  # between a frozen stream's token and its status


class Frozen(asyncio.CancelledError):
    """A resumable stream has sent its resume token at an ``Ending`` that freezes: the call ends as if cancelled by
    it, with its status."""


@dataclass(eq=False, slots=True)
class Tracked:
    """A call in progress: the task that runs it, so that the server can end it with an ``Ending``."""

    calls: Calls = field(repr=False)  # all of them, and their timeouts
    health: bool  # grpc.health.v1: no maximum age, and shut down first
    task: asyncio.Task
    ending: Ending | None = None
    stopping: asyncio.Future | None = None  # a resumable stream's: done when an ending asks it to freeze
    cancelled: bool = False

    def end(self, ending: Ending, force: bool = False) -> None:
        """Cancel the call with ``ending``; a resumable stream (``stopping``) is asked to freeze instead, unless
        ``force``d or the ending does not freeze (a stalled write)."""
        if self.cancelled:
            return
        if self.stopping is not None and ending.freezes and not force:
            if not self.stopping.done():
                self.ending = ending
                self.stopping.set_result(None)
            return
        self.ending, self.cancelled = ending, True
        self.task.cancel()


CURRENT: contextvars.ContextVar[Tracked | None] = contextvars.ContextVar("seqserve_call", default=None)


class Calls:
    """Every call in progress (``start`` to ``stop``), for the shutdown sequence, and the timeouts that end calls:
    the maximum age, and a stream's read or write that takes too long (``Call.read``, ``Call.write``)."""

    def __init__(self, config: Config) -> None:
        self.live: set[Tracked] = set()
        self.quiet = asyncio.Event()  # no call in progress but health watches
        self.quiet.set()
        aged, silent, unread = (max_age(config.max_stream_age_s), idle(config.idle_timeout_s),
                                stalled(config.write_timeout_s))
        self.ages: Timeouts[Tracked] = Timeouts(config.max_stream_age_s, lambda tracked: tracked.end(aged))
        self.reads: Timeouts[Call] = Timeouts(config.idle_timeout_s, lambda call: call.tracked.end(silent))
        self.writes: Timeouts[Call] = Timeouts(config.write_timeout_s, lambda call: call.tracked.end(unread))

    def start(self, health: bool) -> Tracked:
        """The current task runs a call until ``stop``; other than health, it is ended at ``max_age_s``. (Each call
        runs in a task of its own, whose context ``CURRENT`` is set in.)"""
        tracked = Tracked(self, health, asyncio.current_task())
        if not health:
            self.ages.arm(tracked)
            self.quiet.clear()
        self.live.add(tracked)
        CURRENT.set(tracked)
        return tracked

    def stop(self, tracked: Tracked) -> None:
        self.live.discard(tracked)
        self.ages.disarm(tracked)
        if all(t.health for t in self.live):
            self.quiet.set()

    def end(self, ending: Ending, health: bool, force: bool = False) -> None:
        """End every health watch (``health``) or every other call (resumable streams freeze unless ``force``)."""
        for tracked in list(self.live):
            if tracked.health == health:
                tracked.end(ending, force)

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every call but health watches to end; whether they did."""
        try:
            await asyncio.wait_for(self.quiet.wait(), timeout)
        except TimeoutError:
            return False
        return True


class Call:
    """One call: its metrics (status, duration, time to first result, gaps between results, stream slots) and its
    stream's reads and writes, each bounded in time: a client that sends nothing for ``idle_timeout_s`` or takes no
    message for ``write_timeout_s`` ends the stream (logged, counted by reason)."""

    __slots__ = ("context", "end_reason", "freeze", "last", "method", "metrics", "model", "per_result", "protocol",
                 "results", "served", "started", "streams", "task", "tracked")

    def __init__(self, metrics: Metrics, method: str, context: grpc.aio.ServicerContext | None,
                 protocol: str = SEQSERVE) -> None:
        self.metrics, self.method, self.context, self.protocol = metrics, method, context, protocol
        self.tracked = CURRENT.get()
        self.model = self.task = ""
        self.served: Served | None = None  # the version it holds a lease on (hot reload unloads it after the call)
        self.started = self.last = time.perf_counter()
        self.results = 0
        self.per_result: tuple[Histogram, Counter] | None = None  # the labelled metrics of every result after the first
        self.streams = 0
        self.end_reason: str | None = None
        self.freeze: Callable[[], Awaitable[None]] | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {"model": self.model, "method": self.method, "protocol": self.protocol}

    def use(self, served: Served) -> Served:
        """The call uses ``served``: it holds a lease on that version until it closes."""
        self.model, self.task = served.model.name, served.model.task
        self.release()
        served.hold()
        self.served = served
        return served

    def release(self) -> None:
        """Give the version's lease back (once)."""
        if self.served is not None:
            self.served.release()
            self.served = None

    def stream_opened(self, count: int = 1) -> None:
        """The call now holds state slots for ``count`` streams (a batch: one per text), counted as active until
        its handler ends. Call it once the request is valid and its slots are taken, so that refusals are never
        counted."""
        self.streams = count
        self.metrics.active_streams.labels(**self.labels).inc(count)

    def close(self) -> None:
        """The handler has ended: its streams hold nothing any more (a status may still wait for a slow reader)."""
        self.release()
        if self.streams:
            self.metrics.active_streams.labels(**self.labels).dec(self.streams)

    def resumable(self, freeze: Callable[[], Awaitable[None]]) -> None:
        """From now on an ending that freezes (shutdown, maximum age) lets the stream reach a point where what it has
        sent matches its state (``read`` and ``checkpoint``), where ``freeze`` sends its resume token."""
        self.freeze = freeze
        self.tracked.stopping = asyncio.get_running_loop().create_future()

    async def checkpoint(self) -> None:
        """Where a resumable stream may stop: if asked to, send the token and end (``Frozen``)."""
        if self.tracked.stopping is not None and self.tracked.stopping.done():
            await self.freeze()
            # The token must reach the client even if its status does not: at shutdown the process exits right after
            # the last call, and a proxy resets a stream whose data was still on its way (HAProxy, tests/test_replicas).
            await asyncio.sleep(TOKEN_FLUSH_S)
            raise Frozen

    async def read(self) -> Any:
        """The next message of the client's stream, or ``None`` at its end; a checkpoint while it waits."""
        await self.checkpoint()
        operation = self.context.read()
        if self.tracked.stopping is not None:
            operation = self._unless_stopped(operation)
        message = await self._bounded(operation, self.tracked.calls.reads)
        return None if message is grpc.aio.EOF else decoded(message, self.method)

    async def _unless_stopped(self, operation: Awaitable[Any]) -> Any:
        """``operation``'s result, or a checkpoint if the stream is asked to freeze first."""
        reading = asyncio.ensure_future(operation)
        try:
            await asyncio.wait([reading, self.tracked.stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not reading.done():
                reading.cancel()
        if reading.done() and not reading.cancelled():
            return reading.result()
        await self.checkpoint()

    async def write(self, message: Any, results: int = 1) -> None:
        """Send ``message``, which carries ``results`` tokens or steps. gRPC's flow control keeps what a client has
        not read within its window, so a client that stops reading stops the stream here."""
        await self._bounded(self.context.write(message), self.tracked.calls.writes)
        if results:
            self.emitted(results)

    async def _bounded(self, operation: Awaitable[Any], timeouts: Timeouts[Call]) -> Any:
        timeouts.arm(self)
        try:
            return await operation
        finally:
            timeouts.disarm(self)

    def emitted(self, count: int = 1) -> None:
        now = time.perf_counter()
        if self.results == 0:
            self.metrics.first_result.labels(**self.labels).observe(now - self.started)
            self.per_result = (self.metrics.inter_token.labels(**self.labels),
                               self.metrics.results_of(self.task).labels(**self.labels))
        else:
            self.per_result[0].observe(now - self.last)
        self.results += count
        self.last = now
        self.per_result[1].inc(count)

    def finish(self, code: grpc.StatusCode) -> None:
        """Record the call once it is over: a client that went away reads as the end of its stream, so
        only the finished RPC tells whether it was cancelled. A call without a context (one request among
        others on a stream) is closed and recorded at once."""
        if self.context is None:
            self.close()
            self._record(code)
            return
        self.context.add_done_callback(
            lambda context: self._record(grpc.StatusCode.CANCELLED if context.cancelled() else code))

    def _record(self, code: grpc.StatusCode) -> None:
        count_request(self.metrics, self.model, self.method, code, self.protocol)
        self.metrics.request_duration.labels(**self.labels).observe(time.perf_counter() - self.started)
        if self.streams:
            reason = self.end_reason or {grpc.StatusCode.OK: "completed", grpc.StatusCode.CANCELLED: "cancelled",
                                         grpc.StatusCode.DEADLINE_EXCEEDED: "deadline"}.get(code, "error")
            self.metrics.sessions_ended.labels(**self.labels, reason=reason).inc(self.streams)


def count_request(metrics: Metrics, model: str, method: str, code: grpc.StatusCode, protocol: str = SEQSERVE) -> None:
    metrics.requests.labels(model=model, method=method, protocol=protocol, code=code.name).inc()


Handler = Callable[..., Awaitable[Any]]


def status(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status of a call that ``error`` ended: the client's mistake, an overload, else an internal error (logged
    with its traceback)."""
    if isinstance(error, RequestError):
        return error.code, error.message
    if isinstance(error, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    log.exception("%s failed", method)
    return grpc.StatusCode.INTERNAL, f"{method}: internal error (see the server log)"


def rpc(method: str, protocol: str = SEQSERVE) -> Callable[[Handler], Handler]:
    """Wrap a servicer method ``(self, request, context, call)``: map errors to status codes, count the call.

    The server keeps serving after any of them: each ends only its own call. A call that the server ends itself
    (an ``Ending``: a timeout, shutdown) is cancelled; it is counted here and its status is sent by the interceptor.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = Call(self.metrics, method, context, protocol)
            try:
                result = await handler(self, request, context, call)
            except asyncio.CancelledError as cancelled:
                call.close()
                ending = call.tracked.ending
                if ending is not None:
                    if isinstance(cancelled, Frozen):
                        log.info("%s (%s): frozen into a resume token at %s", method, call.model, ending.reason)
                    elif ending is not SHUTDOWN:
                        log.warning("%s (%s): %s", method, call.model, ending.message)
                    call.end_reason = ending.reason
                    call.finish(ending.code)
                else:
                    remaining = context.time_remaining()
                    expired = remaining is not None and remaining <= 0
                    call.finish(grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED)
                raise
            except Exception as error:
                call.close()  # before the status goes out: a client that has it sees the gauges already down
                if context.code() is not None:  # already aborted inside the handler
                    raise
                code, message = status(error, method)
                call.finish(code)
                await context.abort(code, message)
            else:
                call.close()
                call.finish(grpc.StatusCode.OK)
                return result

        return wrapper

    return decorate
