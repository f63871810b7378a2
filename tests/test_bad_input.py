"""The bad-input table: every RPC, every kind of bad request, against one real server.

Each case asserts its status code and the key words of its message; then the server must still
answer health with SERVING, its active-stream and slot gauges must be back to 0, and the call must
have been counted under its code (a refusal before a stream opened is not a stream: no session is
counted). No case may end in UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from servers import CONFIG, MODELS, Running, sentiment_limited, wait_for

from client import Client
from protos.seqserve.v1 import common_pb2, forecast_pb2, sentiment_pb2, translate_pb2

pytestmark = pytest.mark.skipif(not all((MODELS / m).is_dir() for m in ("sentiment", "forecast", "translation")),
                                reason=f"the bad-input table needs every shipped model in {MODELS}")

# The sentiment model reads at most 50 tokens here (its manifest's max_tokens), so the token limits are cheap to reach.
SERVER_CONFIG = replace(CONFIG, models=str(sentiment_limited(50)), max_streams=40, max_beam=8, max_texts=8,
                        max_text_chars=500, max_history=100, idle_timeout_s=1.0)
HISTORY = [100 + 10 * math.sin(i / 2) for i in range(48)]
HUGE = "m" * 100_000  # a name of 100 KB: the message must not echo it
CORRUPT = b"\x0a\xff\xff\xff\xff"  # a length-delimited field whose length runs past the end
IA, NF = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def ref(name: str = "", version: int = 0) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, version=version)


def utf8(field: int, data: bytes) -> bytes:
    """A length-delimited protobuf field holding ``data`` (invalid UTF-8, for a string field)."""
    return bytes([field << 3 | 2, len(data)]) + data


@dataclass(frozen=True)
class Case:
    call: Callable[[Client], Any]  # makes the request and reads the whole answer
    code: grpc.StatusCode
    words: tuple[str, ...]  # in the message
    method: str | None  # counted under this method (None: health, reflection, unknown methods)
    opened: bool = False  # refused after its stream had opened: counted as a session


def raw(method: str, requests: list[bytes], streaming: bool = False, responses: bool = False
        ) -> Callable[[Client], Any]:
    """Bytes as they are, through the client's channel (no serializer)."""

    def call(client: Client) -> Any:
        make = {(False, False): client.channel.unary_unary, (False, True): client.channel.unary_stream,
                (True, False): client.channel.stream_unary, (True, True): client.channel.stream_stream}
        callable_ = make[streaming, responses](method)
        answer = callable_(iter(requests) if streaming else requests[0], timeout=30)
        return list(answer) if responses else answer

    return call


def sentiment_stream(*chunks: str | sentiment_pb2.SentimentChunk, model: str = "sentiment") -> Callable:
    def call(client: Client) -> Any:
        messages = [c if isinstance(c, sentiment_pb2.SentimentChunk) else
                    sentiment_pb2.SentimentChunk(model=ref(model) if i == 0 else None, text=c)
                    for i, c in enumerate(chunks)]
        return list(client.sentiment.StreamSentiment(iter(messages), timeout=30))

    return call


def idle_stream(client: Client) -> Any:
    def requests() -> Iterator[sentiment_pb2.SentimentChunk]:
        yield sentiment_pb2.SentimentChunk(model=ref("sentiment"), text="fine ")
        time.sleep(SERVER_CONFIG.idle_timeout_s + 1)

    return list(client.sentiment.StreamSentiment(requests(), timeout=30))


def observe(*messages: forecast_pb2.Observation) -> Callable:
    return lambda client: list(client.observe(messages))


def first(values: list[float] = HISTORY, model: str = "forecast", **fields: Any) -> forecast_pb2.Observation:
    return forecast_pb2.Observation(model=ref(model), values=values, **fields)


def translate(text: str = "Open the file.", model: str = "translation", **options: Any) -> Callable:
    request = translate_pb2.TranslateRequest(model=ref(model), text=text,
                                             options=translate_pb2.DecodeOptions(**options))
    return lambda client: list(client.translation.Translate(request, timeout=30))


def batch(texts: list[str], model: str = "translation", **options: Any) -> Callable:
    request = translate_pb2.TranslateBatchRequest(model=ref(model), texts=texts,
                                                  options=translate_pb2.DecodeOptions(**options))
    return lambda client: client.translation.TranslateBatch(request, timeout=30)


def health_check(service: str) -> Callable:
    return lambda client: health_pb2_grpc.HealthStub(client.channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=30)


def forecast(history: list[float] = HISTORY, horizon: int = 3, **fields: Any) -> Callable:
    model = fields.pop("model", "forecast")
    return lambda client: list(client.forecast(history, horizon, model=model, **fields))


CHUNK = sentiment_pb2.SentimentChunk(model=ref("sentiment"), text="good ").SerializeToString()
OBSERVATION = first().SerializeToString()
SENTIMENT = "/seqserve.v1.Sentiment/"
NOT_DECODED = ("could not be decoded", "Error parsing message")
LONG_NAME = ("is not loaded", "'mmmmmmmmm", "…")

CASES: dict[str, Case] = {
    # Classify
    "classify empty text": Case(lambda c: c.classify([""]), IA, ("texts[0] is empty",), "Classify"),
    "classify blank text": Case(lambda c: c.classify([" \n\t "]), IA, ("texts[0] is empty",), "Classify"),
    "classify second text empty": Case(lambda c: c.classify(["ok", ""]), IA, ("texts[1] is empty",), "Classify"),
    "classify text too long": Case(lambda c: c.classify(["x" * 501]), IA,
                                   ("texts[0] has 501 characters", "the limit is 500"), "Classify"),
    "classify too many tokens": Case(lambda c: c.classify(["ok", "good " * 51]), IA,
                                     ("texts[1] has 51 tokens", "the limit is 50 (the model's max_tokens)"),
                                     "Classify"),
    "classify too many texts": Case(lambda c: c.classify(["ok"] * 9), IA,
                                    ("texts (their number) is 9", "between 1 and 8"), "Classify"),
    "classify no text": Case(lambda c: c.classify([]), IA, ("texts (their number) is 0",), "Classify"),
    "classify unknown model": Case(lambda c: c.classify(["ok"], model="nope"), NF,
                                   ("model.name 'nope' is not loaded", "ListModels"), "Classify"),
    "classify no model name": Case(lambda c: c.classify(["ok"], model=""), NF, ("model.name '' is not loaded",),
                                   "Classify"),
    "classify unknown version": Case(lambda c: c.classify(["ok"], version=999), NF,
                                     ("model.version 999 of 'sentiment' is not loaded",), "Classify"),
    "classify negative version": Case(lambda c: c.classify(["ok"], version=-1), NF, ("model.version -1",), "Classify"),
    "classify forecast model": Case(lambda c: c.classify(["ok"], model="forecast"), IA,
                                    ("'forecast' is a forecast model", "needs a sentiment model"), "Classify"),
    "classify 100 KB model name": Case(lambda c: c.classify(["ok"], model=HUGE), NF, LONG_NAME, "Classify"),
    "classify corrupt bytes": Case(raw(SENTIMENT + "Classify", [CORRUPT]), IA, NOT_DECODED, "Classify"),
    "classify invalid UTF-8": Case(raw(SENTIMENT + "Classify", [utf8(2, b"\xff\xfe")]), IA,
                                   (*NOT_DECODED, "UTF-8"), "Classify"),
    # StreamSentiment
    "stream first chunk too long": Case(sentiment_stream("x" * 501), IA,
                                        ("text has 501 characters", "the limit is 500 per chunk"), "StreamSentiment"),
    "stream later chunk too long": Case(sentiment_stream("good ", "x" * 501), IA, ("text has 501 characters",),
                                        "StreamSentiment", opened=True),
    "stream too many tokens": Case(sentiment_stream("good " * 30, "bad " * 30), IA,
                                   ("the stream has 60 tokens", "the limit is 50 (the model's max_tokens)"),
                                   "StreamSentiment", opened=True),
    "stream unknown model": Case(sentiment_stream("good", model="nope"), NF, ("model.name 'nope' is not loaded",),
                                 "StreamSentiment"),
    "stream no model": Case(sentiment_stream("good", model=""), NF, ("model.name '' is not loaded",),
                            "StreamSentiment"),
    "stream translation model": Case(sentiment_stream("good", model="translation"), IA,
                                     ("is a translation model",), "StreamSentiment"),
    "stream 100 KB model name": Case(sentiment_stream("good", model=HUGE), NF, LONG_NAME, "StreamSentiment"),
    "stream corrupt first message": Case(raw(SENTIMENT + "StreamSentiment", [CORRUPT], True, True), IA, NOT_DECODED,
                                         "StreamSentiment"),
    "stream corrupt later message": Case(raw(SENTIMENT + "StreamSentiment", [CHUNK, CORRUPT], True, True), IA,
                                         NOT_DECODED, "StreamSentiment", opened=True),
    "stream invalid UTF-8": Case(raw(SENTIMENT + "StreamSentiment", [CHUNK, utf8(2, b"\xc3\x28")], True, True), IA,
                                 ("UTF-8",), "StreamSentiment", opened=True),
    "stream idle": Case(idle_stream, grpc.StatusCode.DEADLINE_EXCEEDED, ("no message for 1 s", "idle_timeout_s"),
                        "StreamSentiment", opened=True),
    # Forecast
    "forecast NaN": Case(forecast([*HISTORY[:1], math.nan, *HISTORY[2:]]), IA, ("history[1] is nan", "finite"),
                         "Forecast"),
    "forecast inf": Case(forecast([*HISTORY[:2], math.inf, *HISTORY[3:]]), IA, ("history[2] is inf", "finite"),
                         "Forecast"),
    "forecast -inf": Case(forecast([-math.inf, *HISTORY[1:]]), IA, ("history[0] is -inf",), "Forecast"),
    "forecast 1e308": Case(forecast([*HISTORY[:-1], 1e308]), IA, ("history[47] is 1e+308", "within ±1e+100"),
                           "Forecast"),
    "forecast negative values": Case(forecast([-2100.0 - i for i in range(48)]), IA,
                                     ("history[0] is -2100.0", "must not be negative"), "Forecast"),
    "forecast history too short": Case(forecast(HISTORY[:3]), IA, ("history (its length) is 3", "between 24 and 100"),
                                       "Forecast"),
    "forecast history too long": Case(forecast(HISTORY * 3), IA, ("history (its length) is 144", "between 24 and 100"),
                                      "Forecast"),
    "forecast horizon 0": Case(forecast(horizon=0), IA, ("horizon is 0", "between 1 and 24"), "Forecast"),
    "forecast horizon negative": Case(forecast(horizon=-3), IA, ("horizon is -3",), "Forecast"),
    "forecast horizon too long": Case(forecast(horizon=25), IA, ("horizon is 25", "between 1 and 24"), "Forecast"),
    "forecast unknown quantile": Case(forecast(quantiles=[0.33]), IA, ("quantiles[0] = 0.33 is not a quantile",),
                                      "Forecast"),
    "forecast NaN quantile": Case(forecast(quantiles=[0.5, math.nan]), IA, ("quantiles[1] = nan",), "Forecast"),
    "forecast start month 13": Case(forecast(start_month=13), IA, ("start_month is 13", "between 1 and 12"),
                                    "Forecast"),
    "forecast start month negative": Case(forecast(start_month=-1), IA, ("start_month is -1",), "Forecast"),
    "forecast unknown model": Case(forecast(model="nope"), NF, ("model.name 'nope' is not loaded",), "Forecast"),
    "forecast sentiment model": Case(forecast(model="sentiment"), IA, ("is a sentiment model",), "Forecast"),
    "forecast 100 KB model name": Case(forecast(model=HUGE), NF, LONG_NAME, "Forecast"),
    "forecast corrupt bytes": Case(raw("/seqserve.v1.Forecast/Forecast", [CORRUPT], responses=True), IA, NOT_DECODED,
                                   "Forecast"),
    # Observe
    "observe history too short": Case(observe(first(HISTORY[:5])), IA, ("values (its length) is 5",), "Observe"),
    "observe NaN": Case(observe(first([math.nan, *HISTORY[1:]])), IA, ("values[0] is nan",), "Observe"),
    "observe negative": Case(observe(first([*HISTORY[:-1], -1.0])), IA, ("values[47] is -1.0", "not be negative"),
                             "Observe"),
    "observe huge value": Case(observe(first([*HISTORY[:-1], -1e200])), IA, ("within ±1e+100",), "Observe"),
    "observe later NaN": Case(observe(first(), forecast_pb2.Observation(values=[math.nan])), IA,
                              ("values[0] is nan",), "Observe", opened=True),
    "observe later negative": Case(observe(first(), forecast_pb2.Observation(values=[5.0, -5.0])), IA,
                                   ("values[1] is -5.0", "must not be negative"), "Observe", opened=True),
    "observe later too many values": Case(observe(first(), forecast_pb2.Observation(values=[1.0] * 101)), IA,
                                          ("values (their length) is 101", "between 0 and 100"), "Observe",
                                          opened=True),
    "observe later horizon too long": Case(observe(first(), forecast_pb2.Observation(values=[1.0], horizon=25)), IA,
                                           ("horizon is 25",), "Observe", opened=True),
    "observe first horizon too long": Case(observe(first(horizon=99)), IA, ("horizon is 99",), "Observe"),
    "observe unknown quantile": Case(observe(first(quantiles=[0.42])), IA, ("quantiles[0] = 0.42",), "Observe"),
    "observe start month 13": Case(observe(first(start_month=13)), IA, ("start_month is 13",), "Observe"),
    "observe unknown model": Case(observe(first(model="nope")), NF, ("model.name 'nope' is not loaded",), "Observe"),
    "observe translation model": Case(observe(first(model="translation")), IA, ("is a translation model",),
                                      "Observe"),
    "observe corrupt first message": Case(raw("/seqserve.v1.Forecast/Observe", [CORRUPT], True, True), IA,
                                          NOT_DECODED, "Observe"),
    "observe corrupt later message": Case(raw("/seqserve.v1.Forecast/Observe", [OBSERVATION, CORRUPT], True, True),
                                          IA, NOT_DECODED, "Observe", opened=True),
    # Translate
    "translate empty text": Case(translate(""), IA, ("text is empty",), "Translate"),
    "translate text too long": Case(translate("x" * 501), IA, ("text has 501 characters", "the limit is 500"),
                                    "Translate"),
    "translate beam too wide": Case(translate(beam=9), IA, ("options.beam is 9", "between 1 and 8"), "Translate"),
    "translate beam negative": Case(translate(beam=-2), IA, ("options.beam is -2",), "Translate"),
    "translate max_length too long": Case(translate(max_length=201), IA, ("options.max_length is 201",),
                                          "Translate"),
    "translate max_length negative": Case(translate(max_length=-5), IA, ("options.max_length is -5",), "Translate"),
    "translate length_penalty NaN": Case(translate(length_penalty=math.nan, beam=2), IA,
                                         ("options.length_penalty is nan", "finite"), "Translate"),
    "translate length_penalty inf": Case(translate(length_penalty=math.inf), IA, ("options.length_penalty is inf",),
                                         "Translate"),
    "translate length_penalty negative": Case(translate(length_penalty=-1.0), IA, ("not negative",), "Translate"),
    "translate tokens per message negative": Case(translate(max_tokens_per_message=-1), IA,
                                                  ("options.max_tokens_per_message is -1", "between 1 and 200"),
                                                  "Translate"),
    "translate tokens per message too many": Case(translate(max_tokens_per_message=201), IA,
                                                  ("options.max_tokens_per_message is 201",), "Translate"),
    "translate unknown model": Case(translate(model="nope"), NF, ("model.name 'nope' is not loaded",), "Translate"),
    "translate sentiment model": Case(translate(model="sentiment"), IA, ("is a sentiment model",), "Translate"),
    "translate 100 KB model name": Case(translate(model=HUGE), NF, LONG_NAME, "Translate"),
    "translate corrupt bytes": Case(raw("/seqserve.v1.Translation/Translate", [CORRUPT], responses=True), IA,
                                    NOT_DECODED, "Translate"),
    "translate invalid UTF-8": Case(raw("/seqserve.v1.Translation/Translate", [utf8(2, b"\xed\xa0\x80")],
                                        responses=True), IA, ("UTF-8",), "Translate"),
    # TranslateBatch
    "batch no text": Case(batch([]), IA, ("texts (their number) is 0",), "TranslateBatch"),
    "batch too many texts": Case(batch(["Open the file."] * 9), IA, ("texts (their number) is 9",), "TranslateBatch"),
    "batch empty text": Case(batch(["Open the file.", " "]), IA, ("texts[1] is empty",), "TranslateBatch"),
    "batch text too long": Case(batch(["x" * 501]), IA, ("texts[0] has 501 characters",), "TranslateBatch"),
    "batch wider than the server": Case(batch(["Open the file."] * 8, beam=8), IA,
                                        ("8 × beam 8 = 64 stream slots", "more than the 40", "max_streams"),
                                        "TranslateBatch"),
    "batch beam too wide": Case(batch(["Open the file."], beam=9), IA, ("options.beam is 9",), "TranslateBatch"),
    "batch unknown model": Case(batch(["x"], model="nope"), NF, ("model.name 'nope' is not loaded",),
                                "TranslateBatch"),
    "batch forecast model": Case(batch(["x"], model="forecast"), IA, ("is a forecast model",), "TranslateBatch"),
    "batch corrupt bytes": Case(raw("/seqserve.v1.Translation/TranslateBatch", [CORRUPT]), IA, NOT_DECODED,
                                "TranslateBatch"),
    "batch invalid UTF-8": Case(raw("/seqserve.v1.Translation/TranslateBatch", [utf8(2, b"\x80")]), IA, ("UTF-8",),
                                "TranslateBatch"),
    # Models
    "get unknown model": Case(lambda c: c.get_model("nope"), NF, ("name 'nope' is not loaded",), "GetModel"),
    "get unknown version": Case(lambda c: c.get_model("sentiment", 999), NF, ("version 999 of 'sentiment'",),
                                "GetModel"),
    "get 100 KB name": Case(lambda c: c.get_model(HUGE), NF, LONG_NAME, "GetModel"),
    "get corrupt bytes": Case(raw("/seqserve.v1.Models/GetModel", [CORRUPT]), IA, NOT_DECODED, "GetModel"),
    "get invalid UTF-8": Case(raw("/seqserve.v1.Models/GetModel", [utf8(1, b"\xff")]), IA, ("UTF-8",), "GetModel"),
    "list corrupt bytes": Case(raw("/seqserve.v1.Models/ListModels", [CORRUPT]), IA, NOT_DECODED, "ListModels"),
    # health, reflection, a method that does not exist
    "health unknown service": Case(health_check("no.Such"), NF, (), None),
    "health 100 KB service name": Case(health_check(HUGE), NF, (), None),
    "health corrupt bytes": Case(raw("/grpc.health.v1.Health/Check", [CORRUPT]), IA, NOT_DECODED, None),
    "reflection corrupt message": Case(raw("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                           [reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString(),
                                            CORRUPT], True, True), IA, NOT_DECODED, None),
    "unknown method": Case(raw(SENTIMENT + "Nope", [b""]), grpc.StatusCode.UNIMPLEMENTED, ("Method not found",), None),
}


def test_the_table_has_every_rpc_and_80_cases() -> None:
    methods = {case.method for case in CASES.values()}
    assert {"Classify", "StreamSentiment", "Forecast", "Observe", "Translate", "TranslateBatch", "GetModel",
            "ListModels"} < methods
    assert len(CASES) >= 80


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(running: Running, client: Client, name: str) -> None:
    case = CASES[name]
    counted = running.sample("seqserve_requests_total", method=case.method or "-", code=case.code.name)
    sessions = running.sample("seqserve_sessions_ended_total")
    with pytest.raises(grpc.RpcError) as error:
        case.call(client)
    code, message = error.value.code(), error.value.details() or ""
    assert code == case.code, (code, message)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    for word in case.words:
        assert word in message, (word, message)
    assert len(message) < 300  # nothing a client sent is echoed at length
    assert client.health() == "SERVING"
    assert wait_for(running.idle), "a stream or slot is still counted"
    if case.method:
        assert wait_for(lambda: running.sample("seqserve_requests_total", method=case.method,
                                               code=case.code.name) == counted + 1)
    assert wait_for(lambda: running.sample("seqserve_sessions_ended_total") == sessions + case.opened)
    assert client.classify(["still serving"]).results
