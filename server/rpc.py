"""What every RPC shares: model lookup, input errors, status codes, per-call metrics and the calls the server ends
itself (shutdown, maximum age, stalled writes)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from server.config import Config
from server.errors import InputError, Overloaded, clip
from server.metrics import Metrics
from server.repository import Repository, Served

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


@functools.cache
def stream_endings(idle_timeout_s: float, write_timeout_s: float) -> tuple[Ending, Ending]:
    """The endings of a silent client and of one that reads nothing: made once, not per call (an idle stream holds
    them, ``bench/idle_sessions.py``)."""
    idle = Ending("idle_timeout", grpc.StatusCode.DEADLINE_EXCEEDED,
                  f"no message for {idle_timeout_s:g} s (idle_timeout_s): the stream was ended")
    stalled = Ending("write_timeout", grpc.StatusCode.DEADLINE_EXCEEDED,
                     f"the client read nothing for {write_timeout_s:g} s (write_timeout_s): the stream was ended")
    return idle, stalled


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

    health: bool  # grpc.health.v1: no maximum age, and shut down first
    task: asyncio.Task
    ending: Ending | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
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
    """Every call in progress (``track``), for the shutdown sequence and the maximum age."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self.live: set[Tracked] = set()
        self.quiet = asyncio.Event()  # no call in progress but health watches
        self.quiet.set()

    @contextmanager
    def track(self, health: bool) -> Iterator[Tracked]:
        """The current task runs a call until the block ends; other than health, it is ended at ``max_age_s``."""
        tracked = Tracked(health, asyncio.current_task())
        if not health:
            tracked.timer = asyncio.get_running_loop().call_later(self.max_age_s, tracked.end, max_age(self.max_age_s))
            self.quiet.clear()
        self.live.add(tracked)
        token = CURRENT.set(tracked)
        try:
            yield tracked
        finally:
            CURRENT.reset(token)
            self.live.discard(tracked)
            if tracked.timer is not None:
                tracked.timer.cancel()
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


class Deadline:
    """A bound in time on each of a call's reads, or each of its writes: ``expire`` runs once one has taken
    ``seconds``. One timer per call instead of one per message: when due, it looks at the operation under way
    (if any) and is set again for that one's own due time."""

    def __init__(self, seconds: float, expire: Callable[[], None]) -> None:
        self.seconds, self.expire = seconds, expire
        self.loop = asyncio.get_running_loop()
        self.since: float | None = None  # when the operation under way started (loop time)
        self.timer: asyncio.TimerHandle | None = None

    async def bound(self, operation: Awaitable[Any]) -> Any:
        self.since = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_at(self.since + self.seconds, self._due)
        try:
            return await operation
        finally:
            self.since = None

    def _due(self) -> None:
        self.timer = None
        if self.since is None:  # nothing under way: the next operation sets the timer again
            return
        due = self.since + self.seconds
        if self.loop.time() >= due:
            self.expire()
        else:
            self.timer = self.loop.call_at(due, self._due)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Call:
    """One call: its metrics (status, duration, time to first result, gaps between results, stream slots) and its
    stream's reads and writes, each bounded in time: a client that sends nothing for ``idle_timeout_s`` or takes no
    message for ``write_timeout_s`` ends the stream (logged, counted by reason)."""

    def __init__(self, metrics: Metrics, method: str, context: grpc.aio.ServicerContext | None, config: Config,
                 protocol: str = SEQSERVE) -> None:
        self.metrics, self.method, self.context, self.protocol = metrics, method, context, protocol
        self.tracked = CURRENT.get()
        self.idle, self.stalled = stream_endings(config.idle_timeout_s, config.write_timeout_s)
        self.reading = Deadline(config.idle_timeout_s, lambda: self.tracked.end(self.idle))
        self.writing = Deadline(config.write_timeout_s, lambda: self.tracked.end(self.stalled))
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
        self.reading.cancel()
        self.writing.cancel()
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
        message = await self.reading.bound(operation)
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
        await self.writing.bound(self.context.write(message))
        if results:
            self.emitted(results)

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
            call = Call(self.metrics, method, context, self.config, protocol)
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
