"""End to end over a real loopback server on an ephemeral port (the shipped ``models/``)."""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from servers import CONFIG, MODELS, Running, newest, newest_translation, sentiment_stream_graph, wait_for

from client import Client
from client.__main__ import main as cli
from contract.repository import load_model
from contract.segments import split_sentences
from contract.sessions import providers
from evaluate import forecast_quantiles, translation_greedy, translation_sources
from protos.seqserve.v1 import (
    common_pb2,
    forecast_pb2,
    sentiment_pb2,
    sentiment_pb2_grpc,
    translate_pb2,
    translate_pb2_grpc,
)
from server.config import Config, load_config
from training.forecast_data import HORIZON, load_panel
from training.translation_data import read_tsv

pytestmark = pytest.mark.skipif(not (MODELS / "sentiment").is_dir(), reason=f"no sentiment model in {MODELS}")

TEXTS = [
    "A wonderful, moving film with a great cast.", "Dull, lifeless and far too long.",
    "It's not bad, but it isn't good either.", "The best thing I've seen this year!",
]


def chunks_of(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_health_and_reflection(running: Running, client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("seqserve.v1.Sentiment") == "SERVING"
    with pytest.raises(grpc.RpcError) as error:
        client.health("no.Such")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    answers = list(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="seqserve.v1.Sentiment"),
    ])))
    services = {s.name for s in answers[0].list_services_response.service}
    assert {"seqserve.v1.Sentiment", "seqserve.v1.Forecast", "seqserve.v1.Translation", "seqserve.v1.Models",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert len(answers[1].file_descriptor_response.file_descriptor_proto) == 2  # sentiment.proto + common.proto
    assert health_pb2.HealthCheckResponse.SERVING == 1


def test_models(client: Client) -> None:
    names = {(m.name, m.task) for m in client.list_models()}
    assert ("sentiment", "sentiment") in names
    info = client.get_model("sentiment")
    assert info.version >= 1 and sentiment_stream_graph() in info.graphs and '"labels"' in info.preprocessing_json
    for name, version in (("nope", 0), ("sentiment", 999)):
        with pytest.raises(grpc.RpcError) as error:
            client.get_model(name, version)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_classify(client: Client) -> None:
    response = client.classify(TEXTS)
    assert list(response.labels) == ["rotten", "fresh"]
    assert [r.label for r in response.results][:2] == ["fresh", "rotten"]
    for result in response.results:
        assert math.isclose(sum(result.probabilities), 1.0, rel_tol=1e-5)
    text = " ".join(["good"] * 100)
    long = client.classify([text]).results[0]
    assert long.tokens == 100  # the whole text, not the 64 tokens that training read
    assert math.isclose(long.probabilities[-1], list(client.stream_sentiment([text]))[-1].positive, abs_tol=1e-5)


def test_stream_sentiment_holds_split_words(client: Client) -> None:
    text = "It's a wonderful film, isn't it?"
    whole = [(u.token, u.positive) for u in client.stream_sentiment([text])]
    assert [t for t, _ in whole] == ["it's", "a", "wonderful", "film", ",", "isn't", "it", "?"]
    split = [(u.token, u.positive) for u in client.stream_sentiment(chunks_of(text, 3))]
    assert split == whole


def test_stream_sentiment_packs_tokens_into_messages_when_asked(client: Client) -> None:
    """``max_tokens_per_message``: the same updates, a chunk's this many to a message."""
    text = "A tense, well acted and surprisingly funny thriller that never lets go of you."
    single = [(u.token, u.position, tuple(u.probabilities)) for u in client.stream_sentiment([text])]
    messages = list(client.stream_sentiment([text], max_tokens_per_message=4))
    packed = [(t.token, t.position, tuple(t.probabilities)) for m in messages for t in m.tokens]
    assert packed == single and len(single) == 16
    # the chunk completes 15 tokens (4 + 4 + 4 + 3); the end of the stream completes the last, "."
    assert [len(m.tokens) for m in messages] == [4, 4, 4, 3, 1] and not any(m.token for m in messages)
    assert list(messages[0].labels) == ["rotten", "fresh"] and not any(m.labels for m in messages[1:])


@pytest.mark.parametrize(("call", "field"), [
    (lambda c: list(c.stream_sentiment(["ok"], max_tokens_per_message=-2)),
     "max_tokens_per_message is -2, it must be between 1 and"),
    (lambda c: c.classify([""]), "texts[0] is empty"),
    (lambda c: c.classify(["   "]), "texts[0] is empty"),
    (lambda c: c.classify(["x" * 501]), "texts[0] has 501 characters, the limit is 500"),
    (lambda c: c.classify(["ok"] * 9), "texts (their number) is 9, it must be between 1 and 8"),
    (lambda c: list(c.stream_sentiment(["x" * 501])), "text has 501 characters, the limit is 500"),
    (lambda c: c.classify(["ok"], model="nope"), "model.name 'nope' is not loaded"),
    (lambda c: c.classify(["ok"], version=999), "model.version 999 of 'sentiment' is not loaded"),
    (lambda c: list(c.forecast([1.0, math.nan], 3, model="sentiment")), "is a sentiment model"),
    (lambda c: list(c.translate("Open the file.", max_tokens_per_message=-1)),
     "options.max_tokens_per_message is -1, it must be between 1 and 200"),
])
def test_bad_input(client: Client, call, field: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        call(client)
    expected = grpc.StatusCode.NOT_FOUND if "not loaded" in field else grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.code() == expected
    assert field in error.value.details()
    assert client.classify(["still serving"]).results  # the server keeps serving


async def _stream(target: str, text: str) -> list[tuple[str, tuple[float, ...]]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        ref = common_pb2.ModelRef(name="sentiment")
        requests = [sentiment_pb2.SentimentChunk(model=ref if i == 0 else None, text=c)
                    for i, c in enumerate(chunks_of(text, 7))]
        return [(u.token, tuple(u.probabilities)) async for u in stub.StreamSentiment(iter(requests))]


def test_batched_streams_equal_solo_streams(running: Running) -> None:
    """64 concurrent streams give the probabilities each gives alone.

    ORT's CPU kernels may round differently for another batch size, so the check allows 1e-5;
    the recorded maximum difference on the shipped model is below that.
    """
    texts = [f"{TEXTS[i % 4]} {'Truly ' * (i % 5)}scene {i} was {['great', 'awful'][i % 2]}." for i in range(64)]
    solo = [asyncio.run(_stream(running.target, text)) for text in texts]
    def over_8() -> float:
        """Runs of the sentiment stream graph with more than 8 rows so far."""
        labels = {"model": "sentiment", "graph": sentiment_stream_graph()}
        return (running.sample("seqserve_batch_size_count", **labels)
                - running.sample("seqserve_batch_size_bucket", **labels, le="8.0"))

    before = over_8()

    async def together() -> list:
        return await asyncio.gather(*(_stream(running.target, text) for text in texts))

    batched = asyncio.run(together())
    assert over_8() > before, "the streams were not batched: no step had more than 8 rows"
    for alone, among in zip(solo, batched, strict=True):
        assert [t for t, _ in alone] == [t for t, _ in among]
        pairs = zip(alone, among, strict=True)
        worst = max(abs(a - b) for (_, pa), (_, pb) in pairs for a, b in zip(pa, pb, strict=True))
        assert worst <= 1e-5


def test_chunk_graph_streams_equal_step_graph_streams(running: Running, client: Client) -> None:
    """Version 2 runs a stream's chunk in runs of up to ``chunk_tokens`` tokens (``chunk``), version 1 token by token
    (``step``): the same weights, so the same updates, for chunks longer than one run too."""
    if not (MODELS / "sentiment" / "1").is_dir() or not (MODELS / "sentiment" / "2").is_dir():
        pytest.skip("needs sentiment versions 1 and 2")
    chunk_tokens = load_model(MODELS / "sentiment" / "2").manifest.preprocessing.chunk_tokens
    words = [["it", "is", "so", "ok", "a", "fun", "bad"][i % 7] for i in range(140)]  # in one chunk: three runs
    chunks = [" ".join(words) + " ", "a dull ", "and lovely film"]
    labels = {"model": "sentiment", "graph": "chunk"}
    runs_before = running.sample("seqserve_batch_size_count", **labels)
    updates = {version: list(client.stream_sentiment(chunks, version=version)) for version in (1, 2)}
    # Three runs for the long chunk, one for each other chunk, one at the end (for "film").
    assert running.sample("seqserve_batch_size_count", **labels) - runs_before == -(-140 // chunk_tokens) + 3
    assert [u.token for u in updates[1]] == [u.token for u in updates[2]] == [*words, "a", "dull", "and", "lovely",
                                                                            "film"]
    worst = max(abs(a - b) for one, two in zip(updates[1], updates[2], strict=True)
                for a, b in zip(one.probabilities, two.probabilities, strict=True))
    assert worst <= 1e-5


def test_cancel_frees_the_slot(running: Running) -> None:
    async def cancel_midway() -> None:
        async with grpc.aio.insecure_channel(running.target) as channel:
            # Written with call.write and never closed: a request iterator would half-close the
            # stream when cancelled, which the server may finish as a normal end of input.
            call = sentiment_pb2_grpc.SentimentStub(channel).StreamSentiment()
            await call.write(sentiment_pb2.SentimentChunk(model=common_pb2.ModelRef(name="sentiment"), text="so good "))
            await call.read()
            assert running.sample("seqserve_active_streams", method="StreamSentiment") == 1
            call.cancel()

    # Streams of earlier tests may still be winding down on a loaded machine: start from zero.
    assert wait_for(lambda: running.sample("seqserve_active_streams", method="StreamSentiment") == 0)
    ended_before = ended_streams(running)
    asyncio.run(cancel_midway())
    assert wait_for(lambda: running.sample("seqserve_active_streams", method="StreamSentiment") == 0)
    assert wait_for(lambda: running.in_use() == 0)
    # A cancel that reaches the server while it waits for the next message is delivered by gRPC
    # as the end of the client's stream, so the session may count as completed (docs/server.md).
    assert wait_for(lambda: ended_streams(running) == ended_before + 1)


def ended_streams(running: Running) -> float:
    return sum(running.sample("seqserve_sessions_ended_total", method="StreamSentiment", reason=reason)
               for reason in ("cancelled", "completed"))


def test_idle_timeout_and_deadline(running: Running, client: Client) -> None:
    def slow(pause: float) -> Iterator[str]:
        yield "fine "
        time.sleep(pause)
        yield "film"

    with pytest.raises(grpc.RpcError) as error:
        list(client.stream_sentiment(slow(CONFIG.idle_timeout_s + 1)))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "idle_timeout_s" in error.value.details()
    assert wait_for(lambda: running.sample("seqserve_sessions_ended_total", reason="idle_timeout") >= 1)
    with Client(running.target, timeout=0.5) as hurried, pytest.raises(grpc.RpcError) as error:
        list(hurried.stream_sentiment(slow(1.0)))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: running.in_use() == 0)


def test_limits_refuse_with_resource_exhausted() -> None:
    small = Running(replace(CONFIG, max_streams=1, max_queue=1))
    try:
        with Client(small.target, timeout=10) as client:
            def held() -> Iterator[str]:
                yield "one "
                time.sleep(1.0)

            first = client.stream_sentiment(held())
            next(first)
            with pytest.raises(grpc.RpcError) as error:
                list(client.stream_sentiment(["two"]))
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "model 'sentiment'" in error.value.details() and "max_streams" in error.value.details()
            list(first)
            with pytest.raises(grpc.RpcError) as error:
                client.classify(TEXTS[:3])
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queued" in error.value.details()
            assert client.classify(TEXTS[:1]).results
    finally:
        small.stop()


def test_metrics_page(running: Running, client: Client) -> None:
    client.classify(TEXTS[:1])
    list(client.stream_sentiment(["good film"]))  # two tokens: a first result and an inter-token gap
    page = running.metrics()
    for name in ("seqserve_requests_total", "seqserve_request_duration_seconds",
                 "seqserve_time_to_first_result_seconds", "seqserve_inter_token_latency_seconds",
                 "seqserve_queue_wait_seconds", "seqserve_batch_size",
                 "seqserve_step_duration_seconds", "seqserve_active_streams", "seqserve_tokens_total",
                 "seqserve_sessions_ended_total", "seqserve_stream_slots", "seqserve_stream_slots_in_use",
                 "seqserve_queue_depth", "seqserve_model_info"):
        assert re.search(rf"^{name}\S*{{.*model=\"sentiment\"", page, re.MULTILINE), name
    assert 'code="INVALID_ARGUMENT"' in page
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info", "python_gc_"):
        assert re.search(rf"^{name}", page, re.MULTILINE), name
    assert running.sample("seqserve_model_info", model="sentiment", version="1", task="sentiment",
                          provider="CPUExecutionProvider") == 1
    slots = running.sample("seqserve_stream_slots", model="sentiment", graph=sentiment_stream_graph())
    assert slots == CONFIG.max_streams
    assert running.sample("seqserve_queue_depth", model="translation", graph="decoder_step") == 0
    assert 'seqserve_stream_slots{graph="sequence"' not in page  # a stateless graph holds no slots


def test_slot_and_queue_gauges_follow_open_streams(running: Running) -> None:
    """Slots in use rise while a stream is open and fall when it ends; steps beyond the queue's room wait in it."""
    graph = sentiment_stream_graph()
    in_use = functools.partial(running.sample, "seqserve_stream_slots_in_use", model="sentiment", graph=graph)
    assert wait_for(lambda: in_use() == 0)

    async def hold_one_open() -> None:
        async with grpc.aio.insecure_channel(running.target) as channel:
            call = sentiment_pb2_grpc.SentimentStub(channel).StreamSentiment()
            await call.write(sentiment_pb2.SentimentChunk(model=common_pb2.ModelRef(name="sentiment"), text="fine "))
            await call.read()
            assert in_use() == 1
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass

    asyncio.run(hold_one_open())
    assert wait_for(lambda: in_use() == 0)
    scheduler = running.server.models["sentiment"][newest("sentiment").version].runner.schedulers[graph]
    depth = functools.partial(running.sample, "seqserve_queue_depth", model="sentiment", graph=graph)
    scheduler.queue.put_nowait(None)  # read when scraped: a queued item shows at once (removed below)
    try:
        assert depth() == 1
    finally:
        scheduler.queue.get_nowait()
    assert depth() == 0


def test_tokens_and_forecast_steps_are_counted_apart(running: Running, client: Client) -> None:
    steps = functools.partial(running.sample, "seqserve_forecast_steps_total", model="forecast", method="Forecast")
    tokens = functools.partial(running.sample, "seqserve_tokens_total", model="translation", method="Translate")
    steps_before, tokens_before = steps(), tokens()
    list(client.forecast([100.0 + i % 12 for i in range(48)], 5))
    sent = sum(len(update.tokens) for update in client.translate("The file could not be opened."))
    assert steps() - steps_before == 5 and tokens() - tokens_before == sent > 0
    assert running.sample("seqserve_tokens_total", model="forecast") == 0
    assert running.sample("seqserve_forecast_steps_total", model="translation") == 0


def test_cli(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    cli(["--server", running.target, "sentiment", "A", "wonderful", "film"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "wonderful" in lines[1] and "P(positive)=" in lines[1]
    cli(["--server", running.target, "models"])
    assert "sentiment/" in capsys.readouterr().out


def test_config_precedence(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"max_batch": 8, "port": 1}')
    config = load_config(["--config", str(path), "--port", "3"], {"SEQSERVE_PORT": "2", "SEQSERVE_MAX_WAIT_MS": "5"})
    assert (config.max_batch, config.port, config.max_wait_ms) == (8, 3, 5.0)
    path.write_text('{"nope": 1}')
    with pytest.raises(ValueError, match="unknown options"):
        load_config(["--config", str(path)], {})
    assert load_config(["--ort-spinning", "on"], {"SEQSERVE_ORT_SPINNING": "false"}).ort_spinning is True
    assert load_config([], {"SEQSERVE_ORT_SPINNING": "0"}).ort_spinning is False
    with pytest.raises(ValueError, match="'ort_spinning': 'maybe' is not a bool"):
        load_config(["--ort-spinning", "maybe"], {})


@pytest.mark.skipif(not (MODELS / "forecast").is_dir(), reason="models/forecast is not shipped yet")
def test_forecast(client: Client) -> None:
    history = [100 + 10 * math.sin(i / 2) for i in range(48)]
    steps = list(client.forecast(history, 6, quantiles=[0.1, 0.5, 0.9], start_month=1))
    assert [s.step for s in steps] == list(range(1, 7)) and [s.month for s in steps] == list(range(1, 7))
    for step in steps:
        assert step.quantiles[0] <= step.point <= step.quantiles[2]
    first = forecast_pb2.Observation(model=common_pb2.ModelRef(name="forecast"), values=history, horizon=1)
    updates = list(client.observe([first, forecast_pb2.Observation(values=[101.0], horizon=2)]))
    assert [len(u.steps) for u in updates] == [1, 2] and updates[1].observed == 49
    assert math.isclose(updates[0].steps[0].point, steps[0].point, rel_tol=1e-5)
    for bad, field in (([1.0, math.nan] * 20, "history[1] is nan"), (history, "horizon is 0")):
        with pytest.raises(grpc.RpcError) as error:
            list(client.forecast(bad, 0 if field.startswith("horizon") else 3))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.value.details()
    for horizon, quantiles, field in ((25, [], "horizon is 25"), (3, [0.33], "quantiles[0] = 0.33")):
        with pytest.raises(grpc.RpcError) as error:
            list(client.forecast(history, horizon, quantiles=quantiles))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.value.details()


@pytest.mark.skipif(not (MODELS / "forecast").is_dir(), reason="models/forecast is not shipped yet")
def test_forecast_equals_the_numpy_rollout(client: Client, data_dir: Path) -> None:
    """A real series (April start) through the server = the reference runtime's rollout (evaluate/) of the whole
    test panel, with the newest version (the one the server serves).

    Also its first 30 values alone: shorter than lag prefix + context, so the scale and the
    teacher-forced window use only what the history has.
    """
    panel = load_panel(data_dir / "forecast" / "aus_retail.csv").cut(HORIZON)
    model = load_model(max((MODELS / "forecast").iterdir(), key=lambda path: int(path.name)))
    median = model.manifest.preprocessing.median
    short = panel.values[0][:30]
    cases = [(panel.values[0], forecast_quantiles(model, panel.values, panel.start_months, HORIZON)[0]),
             (short, forecast_quantiles(model, [short], panel.start_months[:1], HORIZON)[0])]
    for history, expected in cases:
        steps = list(client.forecast(history.tolist(), HORIZON, start_month=int(panel.start_months[0]) + 1))
        np.testing.assert_allclose([list(step.quantiles) for step in steps], expected, rtol=1e-5)
        np.testing.assert_allclose([step.point for step in steps], expected[:, median], rtol=1e-5)


@pytest.mark.skipif(not (MODELS / "forecast").is_dir(), reason="models/forecast is not shipped yet")
def test_every_forecast_version_served_equals_the_numpy_rollout(client: Client, data_dir: Path) -> None:
    """Each shipped version asked for by number = the reference runtime, on the hold-out's first series: version 2
    as it always was, version 3 with its rules (the Theta combination and the calibrated band), step by step."""
    panel = load_panel(data_dir / "forecast" / "aus_retail.csv").cut(HORIZON)
    history, start = panel.values[3][-100:], int(panel.start_months[3] + len(panel.values[3]) - 100) % 12
    for folder in sorted((MODELS / "forecast").iterdir(), key=lambda path: int(path.name)):
        model = load_model(folder)
        expected = forecast_quantiles(model, [history], np.array([start]), HORIZON)[0]
        steps = list(client.forecast(history.tolist(), HORIZON, start_month=start + 1, version=int(folder.name)))
        np.testing.assert_allclose([list(step.quantiles) for step in steps], expected, rtol=1e-5)
        np.testing.assert_allclose([step.point for step in steps], expected[:, model.manifest.preprocessing.median],
                                   rtol=1e-5)
        if model.manifest.preprocessing.window:  # the rules changed what the graph alone gives
            raw = replace(model.manifest, preprocessing=replace(model.manifest.preprocessing, combination=None,
                                                                calibration=None))
            alone = forecast_quantiles(replace(model, manifest=raw), [history], np.array([start]), HORIZON)[0]
            assert np.abs(alone - expected).max() > 1e-3


@pytest.mark.skipif(not (MODELS / "translation").is_dir(), reason="models/translation is not shipped yet")
def test_translate(client: Client) -> None:
    updates = list(client.translate("The file could not be opened."))
    assert all(len(u.tokens) == 1 for u in updates[:-1]) and len(updates[0].source_tokens) >= 2
    assert not any(u.source_tokens for u in updates[1:]) and not updates[-1].tokens  # the last carries the text
    assert not any(u.text for u in updates[:-1]) and updates[-1].text
    tokens = [t for u in updates for t in u.tokens]
    packed = list(client.translate("The file could not be opened.", max_tokens_per_message=4))
    assert all(1 <= len(u.tokens) <= 4 for u in packed[:-1])
    assert [t for u in packed for t in u.tokens] == tokens
    assert all(math.isclose(sum(t.attention), 1.0, rel_tol=1e-4) for t in tokens)
    batch = client.translate_batch(["The file could not be opened."])
    assert list(batch.translations[0].token_ids) == [t.token_id for t in tokens]
    assert batch.translations[0].text == updates[-1].text
    beam = list(client.translate("The file could not be opened.", beam=4))
    assert beam
    with pytest.raises(grpc.RpcError) as error:
        list(client.translate(""))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text is empty" in error.value.details()


@pytest.mark.skipif(not (MODELS / "translation").is_dir(), reason="models/translation is not shipped yet")
def test_translate_equals_the_numpy_greedy_decode_alone_and_concurrently(running: Running, data_dir: Path) -> None:
    """Real test texts: the server's greedy tokens = the reference runtime's ORT loop over the text's sentences;
    8 at once = each alone."""
    pairs = [p for source in ("libreoffice_help", "ding")
             for p in read_tsv(data_dir / "translation" / "pairs" / f"{source}.test.tsv")[:4]]
    texts = [source for source, _ in pairs]
    model = newest_translation()  # what a request without a version gets
    sentences = [[s for s, _ in split_sentences(text)] for text in texts]  # the server translates them one by one
    expected = [[i for ids in translation_greedy(model, translation_sources(model, parts)) for i in ids]
                for parts in sentences]

    def translate(text: str) -> list[tuple[int, float]]:
        with Client(running.target, timeout=30) as client:
            return [(t.token_id, t.log_prob) for t in client.translate_tokens(text)]

    solo = [translate(text) for text in texts]
    assert [[token for token, _ in tokens] for tokens in solo] == expected
    batches_before = running.sample("seqserve_batch_size_count", graph="decoder_step")
    rows_before = running.sample("seqserve_batch_size_sum", graph="decoder_step")
    with ThreadPoolExecutor(len(texts)) as pool:
        together = list(pool.map(translate, texts))
    batches = running.sample("seqserve_batch_size_count", graph="decoder_step") - batches_before
    rows = running.sample("seqserve_batch_size_sum", graph="decoder_step") - rows_before
    assert rows / batches > 2, "the streams were not batched"
    for alone, among in zip(solo, together, strict=True):
        assert [token for token, _ in among] == [token for token, _ in alone]
        np.testing.assert_allclose([p for _, p in among], [p for _, p in alone], atol=1e-4)


@pytest.mark.skipif(not (MODELS / "translation").is_dir(), reason="models/translation is not shipped yet")
def test_translate_cancel_frees_the_generator_slot(running: Running) -> None:
    """A greedy stream cancelled mid-way leaves the generator's batch and gives its slot back.

    The text is one long sentence (about 120 output tokens), so the stream is still decoding when the
    cancel arrives, even on a loaded machine.
    """
    clause = "Select the cells that you want to copy, then choose Edit - Copy to put them on the clipboard"
    text = ", and ".join([clause] * 4) + "."

    async def cancel_midway() -> None:
        async with grpc.aio.insecure_channel(running.target) as channel:
            request = translate_pb2.TranslateRequest(model=common_pb2.ModelRef(name="translation"), text=text)
            call = translate_pb2_grpc.TranslationStub(channel).Translate(request)
            await call.read()
            assert running.sample("seqserve_active_streams", method="Translate") == 1
            call.cancel()

    assert wait_for(lambda: running.sample("seqserve_active_streams", method="Translate") == 0)
    cancelled = running.sample("seqserve_sessions_ended_total", method="Translate", reason="cancelled")
    asyncio.run(cancel_midway())
    assert wait_for(lambda: running.sample("seqserve_active_streams", method="Translate") == 0)
    assert wait_for(lambda: running.in_use() == 0)
    assert wait_for(lambda: running.sample("seqserve_sessions_ended_total", method="Translate",
                                           reason="cancelled") == cancelled + 1)
    with Client(running.target, timeout=30) as client:  # the generator keeps serving
        assert list(client.translate_tokens("Open the file."))


@pytest.mark.skipif(not (MODELS / "translation").is_dir(), reason="models/translation is not shipped yet")
def test_generator_keeps_to_max_batch() -> None:
    small = Running(replace(CONFIG, max_batch=2))
    try:
        texts = ["Open the file.", "Close the window.", "Save the document.", "Print the page.",
                 "Insert a table.", "Delete the row."]

        def translate(text: str) -> list[int]:
            with Client(small.target, timeout=30) as client:
                return [t.token_id for t in client.translate_tokens(text)]

        with ThreadPoolExecutor(len(texts)) as pool:
            together = list(pool.map(translate, texts))
        assert together == [translate(text) for text in texts]
        steps = small.sample("seqserve_batch_size_count", graph="decoder_step")
        assert steps > 0
        # every step of the generator had at most 2 rows: the le="2.0" bucket holds them all
        assert small.sample("seqserve_batch_size_bucket", graph="decoder_step", le="2.0") == steps
    finally:
        small.stop()


def test_cuda_provider_options() -> None:
    """CUDA sessions run without TF32 unless asked: with it, batching changed results on an H100."""
    both = "CUDAExecutionProvider,CPUExecutionProvider"
    assert Config().cuda_tf32 is False
    assert providers(both) == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert providers(both, cuda_tf32=True)[0] == ("CUDAExecutionProvider", {"use_tf32": "1"})
    assert providers("CPUExecutionProvider") == ["CPUExecutionProvider"]


def test_not_found_lists_no_model(client: Client) -> None:
    """Which models exist is ListModels' answer (behind the token, when there is one), never an error message's."""
    for call in (lambda: client.classify(["ok"], model="nope"), lambda: client.get_model("nope"),
                 lambda: client.classify(["ok"], version=999)):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert not {"forecast", "translation", "[1]"} & set(re.findall(r"\w+|\[1\]", error.value.details()))


@pytest.mark.skipif(not (MODELS / "translation").is_dir(), reason="models/translation is not shipped yet")
def test_a_translation_without_tokens_still_sends_its_source(client: Client) -> None:
    updates = list(client.translate("The file could not be opened.", max_length=1))
    assert len(updates) == 1 and not updates[0].tokens and updates[0].source_tokens[-1] == "</s>"
    assert list(updates[0].source_tokens) == list(next(iter(client.translate("The file could not be opened."))
                                                      ).source_tokens)


@pytest.mark.skipif(not (MODELS / "forecast").is_dir(), reason="models/forecast is not shipped yet")
def test_forecast_reads_zeros_and_an_observe_stream_keeps_only_what_it_reads(running: Running, client: Client) -> None:
    zeros = [0.0] * 12 + [100 + 10 * math.sin(i / 2) for i in range(36)]
    assert all(math.isfinite(s.point) and s.point >= 0 for s in client.forecast(zeros, 3))
    task = running.server.models["forecast"][1].task
    history = [100 + 10 * math.sin(i / 2) for i in range(48)]
    later = [100 + 10 * math.sin(i / 2) for i in range(48, 48 + 90)]

    async def final_forecast(messages: list[list[float]]) -> tuple[list[float], int]:
        with task.series(history, 1) as series:
            await series.observe([])
            for values in messages:
                await series.observe(values)
            steps = [s.point async for s in series.forecast(3, [task.pre.median])]
            return steps, len(series.values)

    whole, kept = running.call(final_forecast([later]))
    pieces, kept_in_pieces = running.call(final_forecast([later[i : i + 7] for i in range(0, 90, 7)]))
    assert kept == kept_in_pieces == max(task.pre.lags)  # not the 138 values observed
    np.testing.assert_allclose(pieces, whole, rtol=1e-6)
    newest = running.server.models["forecast"][max(running.server.models["forecast"])].task

    async def recent() -> list[float]:
        with newest.series(history, 1) as series:
            await series.observe([1.0] * (newest.pre.window + 5))
            return series.recent

    if newest.pre.window:  # version 3's rules read the latest window values in series units, and only those
        assert running.call(recent()) == [1.0] * newest.pre.window
