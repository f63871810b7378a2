"""Streams that survive their server: a stream that ends UNAVAILABLE (or is ended for age) after a resume token
continues from it on a new call, with bounded retries and backoff, and the caller sees one uninterrupted stream.

Tokens come as the server sends them (docs/server.md, Resume tokens): as the last message when a server drains or
ends a stream for age, and periodically where the caller asked for them (``resume_every`` for Translate,
``token_every`` for StreamSentiment, ``want_resume_token`` in Observe's messages). What the old call sent beyond its
last token is sent again by the new one and skipped here; what the caller sent beyond it is sent again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from protos.seqserve.v1 import forecast_pb2, sentiment_pb2, translate_pb2


@dataclass
class Retry:
    """How a stream resumes: at most ``attempts`` new calls in a row without a new token, ``backoff_s`` before the
    first and twice as long before each next one, up to ``max_backoff_s``. ``resumes`` records, per resume, the
    seconds from the end of the broken call to the first message of the new one."""

    attempts: int = 5
    backoff_s: float = 0.01
    max_backoff_s: float = 1.0
    resumes: list[float] = field(default_factory=list)

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** attempt, self.max_backoff_s)


LOST = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}
"""How a call ends whose server went away: UNAVAILABLE; through a proxy, CANCELLED when it resets the stream, or
UNKNOWN when it ends the stream without a status (HAProxy does either for a replica killed mid-stream). The client
never cancels a call it resumes itself, and the server answers no call with UNKNOWN."""


def resumable(error: grpc.RpcError, token: bytes, frozen: bool, received: int) -> bool:
    """Whether a call that ended with ``error`` goes on: its server went away (``LOST``) after a token, or before
    the stream delivered anything (it starts again: a replica that was stopping refused it); or the server ended it
    itself right after a token (``frozen``: the maximum age)."""
    if error.code() in LOST:
        return bool(token) or received == 0
    return bool(token) and frozen and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class Resumer:
    """One resumable stream's bookkeeping: its last token, how many results it covers, and the retries."""

    def __init__(self, retry: Retry) -> None:
        self.retry, self.token, self.covered, self.received = retry, b"", 0, 0
        self.frozen = False  # the last message was a token alone
        self.attempt = 0

    def run(self, start: Callable[[bytes], Iterable[Any]], results: Callable[[Any], int],
            trim: Callable[[Any, int], Any], on_token: Callable[[Any, int], None] = lambda message, results: None
            ) -> Iterator[Any]:
        """The messages with results of ``start(token)`` (b"": a new stream), then of each resumed call, with the
        results that an earlier call had already delivered dropped. ``results`` counts a message's results, ``trim``
        drops its first ones; ``on_token`` sees each message that carries a token, and how many results this call
        has brought up to it. A message without results is
        passed on unless it carries only a token."""
        broke: float | None = None
        while True:
            position = began = self.covered  # the stream's results before this call's first
            try:
                for message in start(self.token):
                    if broke is not None:
                        self.retry.resumes.append(time.perf_counter() - broke)
                        broke = None
                    count = results(message)
                    position += count
                    if message.resume_token:  # it covers every result up to here
                        self.token, self.covered, self.attempt = message.resume_token, position, 0
                        on_token(message, position - began)
                    self.frozen = bool(message.resume_token) and count == 0
                    if count == 0:  # a token alone is bookkeeping; anything else is the caller's
                        if not message.resume_token:
                            yield message
                    elif (new := position - self.received) > 0:
                        if new < count:
                            message = trim(message, count - new)
                        self.received = position
                        yield message
                return
            except grpc.RpcError as error:
                if not resumable(error, self.token, self.frozen, self.received) or self.attempt >= self.retry.attempts:
                    raise
                broke = time.perf_counter()
                time.sleep(self.retry.delay(self.attempt))
                self.attempt += 1


def translate(call: Callable[..., Iterable[translate_pb2.TranslateUpdate]], request: translate_pb2.TranslateRequest,
              timeout: float | None, retry: Retry) -> Iterator[translate_pb2.TranslateUpdate]:
    """``Translate`` that resumes; updates that carry only a token are not passed on, nor are tokens."""

    def start(token: bytes) -> Iterable[translate_pb2.TranslateUpdate]:
        resumed = translate_pb2.TranslateRequest(resume_token=token, resume_every=request.resume_every)
        return call(resumed if token else request, timeout=timeout)

    def trim(update: translate_pb2.TranslateUpdate, drop: int) -> translate_pb2.TranslateUpdate:
        del update.tokens[:drop]
        return update

    for update in Resumer(retry).run(start, lambda u: len(u.tokens), trim):
        update.ClearField("resume_token")
        yield update


class Outbox:
    """A client stream's requests, for several calls in turn: one thread reads the caller's iterator (it may block,
    and gRPC's thread of a broken call may still be waiting in it); each call sends, from its own cursor, what no
    token covers yet and then what comes. A newer call ends the older one's requests."""

    def __init__(self, requests: Iterable[Any]) -> None:
        self.source = requests
        self.items: list[Any] = []  # the requests from index ``base`` of the stream on
        self.base = self.start = 0  # the stream's index of items[0]; of the current call's first request
        self.done, self.call = False, 0
        self.ready = threading.Condition()
        self.reader: threading.Thread | None = None

    def _read(self) -> None:
        try:
            for request in self.source:
                with self.ready:
                    self.items.append(request)
                    self.ready.notify_all()
        finally:
            with self.ready:
                self.done = True
                self.ready.notify_all()

    def requests(self, lead: list[Any], alter: Callable[[Any], Any] | None = None) -> Iterator[Any]:
        """A new call's requests: ``lead`` (before the caller's), then every request no token covers yet, the first
        of them through ``alter`` if given."""
        with self.ready:
            self.call += 1
            call, index = self.call, self.base
            self.start = self.base
            self.ready.notify_all()
            if self.reader is None:
                self.reader = threading.Thread(target=self._read, daemon=True, name="seqserve-outbox")
                self.reader.start()
        yield from lead
        while (request := self._next(call, index)) is not None:
            yield alter(request) if alter is not None and index == self.start else request
            index += 1

    def _next(self, call: int, index: int) -> Any | None:
        """The stream's request ``index`` once read; None once there is none or a newer call has started."""
        with self.ready:
            self.ready.wait_for(lambda: index < self.base + len(self.items) or self.done or self.call != call)
            if self.call != call or index >= self.base + len(self.items):
                return None
            return self.items[index - self.base]

    def covered(self, count: int) -> None:
        """A token covers the current call's first ``count`` of the caller's requests."""
        with self.ready:
            drop = self.start + count - self.base
            del self.items[:drop]
            self.base += drop


def stream_sentiment(call: Callable[..., Iterable[sentiment_pb2.SentimentUpdate]],
                     chunks: Iterable[sentiment_pb2.SentimentChunk], timeout: float | None, retry: Retry,
                     per_message: int = 0) -> Iterator[sentiment_pb2.SentimentUpdate]:
    """``StreamSentiment`` that resumes: a resumed call sends a chunk with the token (and ``per_message``, the
    first chunk's ``max_tokens_per_message``) alone, then the chunks no token covers yet, then the rest."""
    outbox, resumed = Outbox(chunks), False

    def start(token: bytes) -> Iterable[sentiment_pb2.SentimentUpdate]:
        nonlocal resumed
        resumed = bool(token)
        first = sentiment_pb2.SentimentChunk(resume_token=token, max_tokens_per_message=per_message)
        return call(outbox.requests([first] if token else []),
                    timeout=timeout)

    def on_token(update: sentiment_pb2.SentimentUpdate, results: int) -> None:  # chunks_read counts the token's
        outbox.covered(update.chunks_read - resumed)

    yield from Resumer(retry).run(start, lambda u: 0 if u.resume_token else len(u.tokens) or 1, lambda u, drop: u,
                                  on_token)


def observe(call: Callable[..., Iterable[forecast_pb2.ForecastUpdate]],
            observations: Iterable[forecast_pb2.Observation], timeout: float | None, retry: Retry
            ) -> Iterator[forecast_pb2.ForecastUpdate]:
    """``Observe`` that resumes: a resumed call's first message is the first observation no token covers, carrying
    the token and the first message's quantiles; updates that carry only a token are not passed on, nor are tokens.
    Each answered observation has one update, so a token covers as many observations as updates came before it."""
    outbox, quantiles = Outbox(observations), []

    def resumed(token: bytes, observation: forecast_pb2.Observation) -> forecast_pb2.Observation:
        first = forecast_pb2.Observation()
        first.CopyFrom(observation)
        first.ClearField("model")
        first.resume_token, first.quantiles[:] = token, quantiles
        return first

    def remember(observation: forecast_pb2.Observation) -> forecast_pb2.Observation:
        quantiles[:] = observation.quantiles
        return observation

    def start(token: bytes) -> Iterable[forecast_pb2.ForecastUpdate]:
        alter = (lambda o: resumed(token, o)) if token else (remember if not quantiles else None)
        return call(outbox.requests([], alter), timeout=timeout)

    for update in Resumer(retry).run(start, lambda u: 1 if u.steps else 0, lambda u, drop: u,
                                     lambda update, results: outbox.covered(results)):
        update.ClearField("resume_token")
        yield update
