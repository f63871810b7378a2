"""What every RPC shares: model lookup, input errors, status codes and per-call metrics."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.errors import InputError, Overloaded
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
    """The model ``name`` at ``version`` (0 = newest); NOT_FOUND names the ``field`` and what exists."""
    versions = repository.get(name)
    if versions is None:
        raise RequestError(grpc.StatusCode.NOT_FOUND,
                           f"{field}name {name!r} is not loaded (models: {sorted(repository)})")
    version = version or max(versions)
    if version not in versions:
        raise RequestError(grpc.StatusCode.NOT_FOUND,
                           f"{field}version {version} of {name!r} is not loaded (versions: {sorted(versions)})")
    return versions[version]


def resolve(repository: Repository, ref: Any, task: str) -> Served:
    """The model for ``ref`` (a ``ModelRef``), which must serve ``task``."""
    served = lookup(repository, ref.name, ref.version)
    if served.model.task != task:
        kind = served.model.task or "task-less (generic stateful)"
        raise InputError(f"model.name {ref.name!r} is a {kind} model, this method needs a {task} model")
    return served


class Call:
    """Metrics of one call: status, duration, time to first result, gaps between results, stream slots.

    ``context`` is the RPC's; without one (a request among others on one stream) the call is
    recorded as soon as it finishes.
    """

    def __init__(self, metrics: Metrics, method: str, context: grpc.aio.ServicerContext | None,
                 protocol: str = SEQSERVE) -> None:
        self.metrics, self.method, self.context, self.protocol = metrics, method, context, protocol
        self.model = self.task = ""
        self.started = self.last = time.perf_counter()
        self.results = 0
        self.streaming = False
        self.end_reason: str | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {"model": self.model, "method": self.method, "protocol": self.protocol}

    def use(self, served: Served) -> Served:
        self.model, self.task = served.model.name, served.model.task
        return served

    def stream_opened(self) -> None:
        """The call now holds state slots: it counts as an active stream until it ends."""
        self.streaming = True
        self.metrics.active_streams.labels(**self.labels).inc()

    def emitted(self, count: int = 1) -> None:
        now = time.perf_counter()
        if self.results == 0:
            self.metrics.first_result.labels(**self.labels).observe(now - self.started)
        else:
            self.metrics.inter_token.labels(**self.labels).observe(now - self.last)
        self.results += count
        self.last = now
        self.metrics.results_of(self.task).labels(**self.labels).inc(count)

    def finish(self, code: grpc.StatusCode) -> None:
        """Record the call once it is over: a client that went away reads as the end of its stream, so
        only the finished RPC tells whether it was cancelled."""
        if self.context is None:
            self._record(code)
            return
        self.context.add_done_callback(
            lambda context: self._record(grpc.StatusCode.CANCELLED if context.cancelled() else code))

    def _record(self, code: grpc.StatusCode) -> None:
        self.metrics.requests.labels(**self.labels, code=code.name).inc()
        self.metrics.request_duration.labels(**self.labels).observe(time.perf_counter() - self.started)
        if self.streaming:
            self.metrics.active_streams.labels(**self.labels).dec()
            reason = self.end_reason or {grpc.StatusCode.OK: "completed", grpc.StatusCode.CANCELLED: "cancelled",
                                         grpc.StatusCode.DEADLINE_EXCEEDED: "deadline"}.get(code, "error")
            self.metrics.sessions_ended.labels(**self.labels, reason=reason).inc()


Handler = Callable[..., Awaitable[Any]]


def status(error: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The status and message of an error that the client caused or may retry; None for a server fault."""
    if isinstance(error, RequestError):
        return error.code, error.message
    if isinstance(error, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    return None


def internal(method: str) -> tuple[grpc.StatusCode, str]:
    """A server fault, logged with its traceback (call it in an ``except`` block)."""
    log.exception("%s failed", method)
    return grpc.StatusCode.INTERNAL, f"{method}: internal error (see the server log)"


def rpc(method: str, protocol: str = SEQSERVE) -> Callable[[Handler], Handler]:
    """Wrap a servicer method ``(self, request, context, call)``: map errors to status codes, count the call.

    The server keeps serving after any of them: each ends only its own call.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = Call(self.metrics, method, context, protocol)
            try:
                result = await handler(self, request, context, call)
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                call.finish(grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED)
                raise
            except Exception as error:
                known = status(error)
                if known is None:
                    if context.code() is not None:  # already aborted inside the handler
                        raise
                    known = internal(method)
                call.finish(known[0])
                await context.abort(*known)
            else:
                call.finish(grpc.StatusCode.OK)
                return result

        return wrapper

    return decorate


async def read(context: grpc.aio.ServicerContext, call: Call, idle_timeout: float) -> Any:
    """The next message of a client stream, or ``None`` at its end. A client silent for
    ``idle_timeout`` seconds ends the stream (logged, counted as ``idle_timeout``)."""
    try:
        message = await asyncio.wait_for(context.read(), idle_timeout)
    except TimeoutError:
        log.warning("%s (%s): no message for %.0f s, ending the stream", call.method, call.model, idle_timeout)
        call.end_reason = "idle_timeout"
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"no message for {idle_timeout:g} s (idle_timeout_s): the stream was ended") from None
    return None if message is grpc.aio.EOF else message
