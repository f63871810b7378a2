"""The gRPC server interceptor that every call passes: bearer tokens, undecodable requests, and the tracking
that lets the server end a call itself (``rpc.Calls``: shutdown, maximum age).

It wraps each method's handler (ours, health and reflection alike): its request deserializer returns
``rpc.Undecodable`` instead of raising, and its behavior runs inside ``wrapped``. Health needs no token
and has no maximum age; its ``Watch`` streams are the first calls ended at shutdown.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from protos.inference import kserve_pb2
from server.metrics import Metrics
from server.rpc import KSERVE, SEQSERVE, Calls, RequestError, count_request, decoded, tolerant
from server.security import Tokens

log = logging.getLogger(__name__)

HEALTH = f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/"
KSERVE_SERVICE = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
UNAUTHENTICATED = "a bearer token is required: send the metadata 'authorization: Bearer <token>' with a valid token"


class Interceptor(grpc.aio.ServerInterceptor):
    def __init__(self, calls: Calls, tokens: Tokens, metrics: Metrics) -> None:
        self.calls, self.tokens, self.metrics = calls, tokens, metrics
        # Each method's wrapped handler, for callers with a valid token and without one: made once, not per call
        # (the wrapping and its closures cost a call time, and memory while it runs).
        self.wrapped: dict[tuple[str, bool], Any] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        allowed = details.method.startswith(HEALTH) or self.tokens.allow(details.invocation_metadata)
        wrapped = self.wrapped.get((details.method, allowed))
        if wrapped is None:
            wrapped = self.wrapped[details.method, allowed] = self.wrap(handler, details.method, allowed)
        return wrapped

    def wrap(self, handler: Any, path: str, allowed: bool) -> Any:
        """``handler`` of the method ``path`` (``/package.Service/Method``) for callers that are ``allowed`` or not."""
        health = path.startswith(HEALTH)
        method = path.rsplit("/", 1)[-1]
        protocol = KSERVE if path.startswith(f"/{KSERVE_SERVICE}/") else SEQSERVE
        streaming = handler.request_streaming
        kind = next(k for k in KINDS if getattr(handler, k) is not None)
        behavior = getattr(handler, kind)
        if inspect.isasyncgenfunction(behavior):  # reflection: responses yielded, written here instead
            behavior = written(behavior)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            """Run one call: refuse it without a valid token or with an undecodable request (counted), track it
            while it runs, and send the status of a call that the server ends itself. Plain code in one coroutine,
            not a context manager: a call keeps its frame while it runs (``bench/idle_sessions.py``)."""
            try:
                if not allowed:
                    log.warning("%s from %s: no valid bearer token", method, context.peer())
                    raise RequestError(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
                checked = Decoded(request, method) if streaming else decoded(request, method)
            except RequestError as error:
                count_request(self.metrics, "", method, error.code, protocol)
                await context.abort(error.code, error.message)
            tracked = self.calls.start(health)
            try:
                return await behavior(checked, context)
            except asyncio.CancelledError:
                if tracked.ending is None:  # the client's cancellation or deadline
                    raise
                ending = tracked.ending
            except RequestError as error:  # an undecodable message from a request iterator
                count_request(self.metrics, "", method, error.code, protocol)
                await context.abort(error.code, error.message)
            finally:
                self.calls.stop(tracked)
            # Untracked by now: a status behind a message that a client does not read (a stalled write) goes out
            # only once it reads, and its call holds nothing meanwhile.
            try:
                await context.abort(ending.code, ending.message)
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # gRPC could not send it: the client left first
                log.info("%s: the client left before its status (%s) was sent", method, ending.reason)
                raise asyncio.CancelledError from error

        deserializer = handler.request_deserializer
        return handler._replace(**{kind: wrapped, "request_deserializer": deserializer and tolerant(deserializer)})


def written(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Awaitable[None]]:
    """A handler that yields its responses as one that writes them (``context.write``), as ours do."""

    async def write_all(request: Any, context: grpc.aio.ServicerContext) -> None:
        async for response in behavior(request, context):
            await context.write(response)

    return write_all


class Decoded:
    """A client stream's messages, each through ``decoded`` (an undecodable one raises ``RequestError``). A class and
    not an async generator: every streaming call makes one, and most read through ``Call.read`` instead."""

    __slots__ = ("method", "requests")

    def __init__(self, requests: AsyncIterator[Any], method: str) -> None:
        self.requests, self.method = requests, method

    def __aiter__(self) -> Decoded:
        return self

    async def __anext__(self) -> Any:
        return decoded(await anext(self.requests), self.method)
