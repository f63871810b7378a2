"""``Client``: one channel, one method per RPC, plain Python values in and protobuf messages out.

The channel is plaintext unless TLS is asked for (``tls``, or a CA, or a client certificate for
mTLS); ``token`` is sent as ``authorization: Bearer <token>`` with every call. ``Translate``,
``StreamSentiment`` and ``Observe`` streams resume by themselves from the server's resume tokens
(``client/resume.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import resume
from protos.seqserve.v1 import (
    common_pb2,
    forecast_pb2,
    forecast_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
    translate_pb2,
    translate_pb2_grpc,
)


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(details._replace(metadata=[*(details.metadata or ()), self.header]), request)

    intercept_unary_unary = intercept_unary_stream = intercept_stream_unary = intercept_stream_stream = _call


def channel(target: str, tls: bool = False, ca: str | None = None, cert: str | None = None, key: str | None = None,
            token: str | None = None) -> grpc.Channel:
    """A channel to ``target``: TLS when ``tls`` or any of the PEM files is given (``ca``: the roots to trust instead
    of the system's; ``cert`` and ``key``: this client's certificate, for mTLS), with ``token`` on every call."""
    if tls or ca or cert or key:
        files = [Path(path).read_bytes() if path else None for path in (ca, key, cert)]
        made = grpc.secure_channel(target, grpc.ssl_channel_credentials(*files))
    else:
        made = grpc.insecure_channel(target)
    return grpc.intercept_channel(made, BearerToken(token)) if token else made


class Client:
    def __init__(self, target: str = "localhost:50051", timeout: float | None = None, *, tls: bool = False,
                 ca: str | None = None, cert: str | None = None, key: str | None = None, token: str | None = None,
                 retry: resume.Retry | None = None) -> None:
        """``retry``: how streams resume (``Retry()``: 5 attempts; ``Retry(attempts=0)``: never)."""
        self.channel = channel(target, tls, ca, cert, key, token)
        self.timeout = timeout
        self.retry = retry or resume.Retry()
        self.sentiment = sentiment_pb2_grpc.SentimentStub(self.channel)
        self.forecaster = forecast_pb2_grpc.ForecastStub(self.channel)
        self.translation = translate_pb2_grpc.TranslationStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, service: str = "") -> str:
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def list_models(self) -> list[models_pb2.ModelInfo]:
        return list(self.models.ListModels(models_pb2.ListModelsRequest(), timeout=self.timeout).models)

    def get_model(self, name: str, version: int = 0) -> models_pb2.ModelInfo:
        return self.models.GetModel(common_pb2.ModelRef(name=name, version=version), timeout=self.timeout)

    def reload(self) -> models_pb2.ReloadResponse:
        """Hot reload now: versions loaded and retired by this scan, and every refused one (docs/server.md)."""
        return self.models.Reload(models_pb2.ReloadRequest(), timeout=self.timeout)

    def classify(self, texts: list[str], model: str = "sentiment", version: int = 0
                 ) -> sentiment_pb2.ClassifyResponse:
        request = sentiment_pb2.ClassifyRequest(model=common_pb2.ModelRef(name=model, version=version), texts=texts)
        return self.sentiment.Classify(request, timeout=self.timeout)

    def stream_sentiment(self, chunks: Iterable[str], model: str = "sentiment", version: int = 0,
                         token_every: int = 0, max_tokens_per_message: int = 0
                         ) -> Iterator[sentiment_pb2.SentimentUpdate]:
        """One update per complete token while ``chunks`` are still being produced (with ``max_tokens_per_message``
        above 1, up to that many in a message's ``tokens``); a resume token is asked for after every ``token_every``
        chunks (0: only the server's own, at shutdown or maximum age)."""
        def requests() -> Iterator[sentiment_pb2.SentimentChunk]:
            ref = common_pb2.ModelRef(name=model, version=version)
            for index, chunk in enumerate(chunks):
                yield sentiment_pb2.SentimentChunk(model=ref if index == 0 else None, text=chunk,
                                                   want_resume_token=token_every > 0 and (index + 1) % token_every == 0,
                                                   max_tokens_per_message=max_tokens_per_message if index == 0 else 0)

        return resume.stream_sentiment(self.sentiment.StreamSentiment, requests(), self.timeout, self.retry,
                                       max_tokens_per_message)

    def forecast(self, history: list[float], horizon: int, quantiles: Iterable[float] = (), start_month: int = 0,
                 model: str = "forecast", version: int = 0) -> Iterator[forecast_pb2.ForecastStep]:
        request = forecast_pb2.ForecastRequest(model=common_pb2.ModelRef(name=model, version=version),
                                               history=history, horizon=horizon, quantiles=list(quantiles),
                                               start_month=start_month)
        return self.forecaster.Forecast(request, timeout=self.timeout)

    def observe(self, observations: Iterable[forecast_pb2.Observation]) -> Iterator[forecast_pb2.ForecastUpdate]:
        """One update per observation (a message may ask for a resume token: ``want_resume_token``)."""
        return resume.observe(self.forecaster.Observe, observations, self.timeout, self.retry)

    def translate(self, text: str, beam: int = 1, max_length: int = 0, length_penalty: float = 0.0,
                  max_tokens_per_message: int = 1, model: str = "translation", version: int = 0, resume_every: int = 0,
                  fill_messages: bool = False) -> Iterator[translate_pb2.TranslateUpdate]:
        """Updates of one or more tokens each (``max_tokens_per_message``; held back to fill them with
        ``fill_messages``); the first names the source pieces. A greedy translation asks for a resume token every
        ``resume_every`` tokens (0: only the server's own)."""
        request = translate_pb2.TranslateRequest(
            model=common_pb2.ModelRef(name=model, version=version), text=text, resume_every=resume_every,
            options=translate_pb2.DecodeOptions(beam=beam, max_length=max_length, length_penalty=length_penalty,
                                                max_tokens_per_message=max_tokens_per_message,
                                                fill_messages=fill_messages))
        return resume.translate(self.translation.Translate, request, self.timeout, self.retry)

    def translate_tokens(self, text: str, **options: Any) -> Iterator[translate_pb2.TranslateToken]:
        """``translate``'s tokens one by one, as their updates arrive."""
        for update in self.translate(text, **options):
            yield from update.tokens

    def translate_batch(self, texts: list[str], beam: int = 1, model: str = "translation", version: int = 0
                        ) -> translate_pb2.TranslateBatchResponse:
        request = translate_pb2.TranslateBatchRequest(model=common_pb2.ModelRef(name=model, version=version),
                                                      texts=texts, options=translate_pb2.DecodeOptions(beam=beam))
        return self.translation.TranslateBatch(request, timeout=self.timeout)
