"""One client must not degrade or lock out the others: a test per harm that issue #11 measured.

1. A StreamSentiment client flooding one endless word: other clients' Classify and health p50 stay
   within 2x of the idle server's (ratios measured in the same test, server and flood in their own
   processes), and the word comes back as one token cut at ``max_token_chars``.
2. TranslateBatch: admitted whole or not at all (beam x texts rows), counted in the gauges, refused
   with the limit named, and on failure or cancellation every row stops and is freed at once.
3. Slow readers: decoded translations give their slots back before they are read, a client that
   stops reading is ended at ``write_timeout_s``, and any stream at ``max_stream_age_s``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

import grpc
import pytest
from servers import CONFIG, MODELS, ROOT, Process, Running, sentiment_stream_graph, wait_for

from client import Client
from protos.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc, translate_pb2, translate_pb2_grpc

pytestmark = pytest.mark.skipif(not all((MODELS / m).is_dir() for m in ("sentiment", "translation")),
                                reason=f"needs the shipped sentiment and translation models in {MODELS}")

LONG = ["Select the cells that you want to copy, then choose Edit - Copy to put them on the clipboard.",
        "If you want to insert the contents of the clipboard into a new document, choose File - New first.",
        "The dialog shows the properties of the selected object, which you can change before you save it.",
        "To remove the automatic numbering from a paragraph, place the cursor in it and press the Backspace key."]
# A client that reads nothing: no window growth, about 1 KB of window (gRPC's default grows to megabytes).
NOT_READING = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]


def p50(call, count: int = 60) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_a_flood_of_one_endless_word_leaves_other_clients_fast() -> None:
    server = Process("--max-text-chars", "5000", "--max-token-chars", "100")
    try:
        with Client(server.target, timeout=30) as client:
            classify, health = (lambda: client.classify(["A wonderful, moving film."])), client.health
            p50(classify, 10)
            idle = p50(classify), p50(health)
            flood = subprocess.Popen([sys.executable, str(ROOT / "tests" / "flood.py"), server.target, "6", "1000"],
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)
            try:
                assert wait_for(lambda: server.sample("seqserve_active_streams", method="StreamSentiment") == 1)
                time.sleep(0.5)  # 2.5 MB in: the old tokenizer rescanned all of it at every chunk
                flooded = p50(classify), p50(health)
            finally:
                out, _ = flood.communicate(timeout=120)
        sent = json.loads(out)
        assert sent["characters"] > 20_000_000  # 5 MB a second for 6 s
        assert sent["tokens"] == ["a" * 100 + "…", "the", "end"]  # one word, cut, then the rest of the text
        ratios = [loaded / alone for loaded, alone in zip(flooded, idle, strict=True)]
        print(f"Classify p50 {idle[0] * 1e3:.2f} -> {flooded[0] * 1e3:.2f} ms, health p50 {idle[1] * 1e3:.2f} -> "
              f"{flooded[1] * 1e3:.2f} ms under a 5 MB/s flood: ratios {ratios[0]:.2f}, {ratios[1]:.2f}")
        assert max(ratios) < 2.0
        assert server.idle()
    finally:
        server.stop()


def batch_request(texts: list[str], beam: int) -> translate_pb2.TranslateBatchRequest:
    # A length penalty of 5 favours long hypotheses: the search runs for seconds, long enough to watch.
    return translate_pb2.TranslateBatchRequest(model=common_pb2.ModelRef(name="translation"), texts=texts,
                                               options=translate_pb2.DecodeOptions(beam=beam, length_penalty=5.0))


def decoder_steps(running: Running) -> float:
    return running.sample("seqserve_batch_size_count", graph="decoder_step")


def test_translate_batch_is_admitted_whole_and_stops_whole() -> None:
    running = Running(replace(CONFIG, max_streams=128, max_texts=32, max_beam=8, max_queue=16))
    try:
        with Client(running.target, timeout=60) as client:
            stub = translate_pb2_grpc.TranslationStub(client.channel)
            # More rows than the server could ever hold: refused at once, nothing taken.
            with pytest.raises(grpc.RpcError) as error:
                stub.TranslateBatch(batch_request(LONG * 5, 8), timeout=30)  # 20 x 8 = 160 rows
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "20 × beam 8 = 160 stream slots, more than the 128" in error.value.details()
            assert "max_streams" in error.value.details() and running.idle()

            # 16 texts x beam 8 hold every row, counted as 16 streams and 128 slots.
            first = stub.TranslateBatch.future(batch_request(LONG * 4, 8), timeout=60)
            assert wait_for(lambda: running.sample("seqserve_stream_slots_in_use", graph="decoder_step") == 128)
            assert running.sample("seqserve_active_streams", method="TranslateBatch") == 16
            # A batch that would fit later is refused whole, saying why; nothing of it is admitted.
            for call in (lambda: stub.TranslateBatch(batch_request(LONG[:1], 2), timeout=30),
                         lambda: list(client.translate(LONG[0]))):
                with pytest.raises(grpc.RpcError) as error:
                    call()
                assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "0 of 128 free" in error.value.details() and "max_streams" in error.value.details()
            assert running.sample("seqserve_stream_slots_in_use", graph="decoder_step") == 128

            # The client goes away: every row stops at once and is given back.
            assert not first.done()
            first.cancel()
            assert wait_for(lambda: running.idle(), 2.0)
            steps = decoder_steps(running)
            time.sleep(1.0)
            assert decoder_steps(running) == steps, "rows of the cancelled batch kept decoding"
            assert list(client.translate_tokens("Open the file."))

            # One text fails (24 encoder steps into a queue of 16): the batch fails and the others stop with it.
            with pytest.raises(grpc.RpcError) as error:
                stub.TranslateBatch(batch_request(LONG * 6, 2), timeout=60)
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "steps are queued" in \
                error.value.details()
            assert running.idle()
            steps = decoder_steps(running)
            time.sleep(1.0)
            assert decoder_steps(running) == steps, "the other texts of the failed batch kept decoding"
            started = time.perf_counter()
            assert client.translate_batch(LONG[:2], beam=2).translations
            assert time.perf_counter() - started < 10
    finally:
        running.stop()


def test_slow_readers_do_not_hold_slots() -> None:
    running = Running(replace(CONFIG, max_streams=4, write_timeout_s=1.5, max_stream_age_s=4.0, idle_timeout_s=10.0))
    channels = [grpc.insecure_channel(running.target, options=NOT_READING) for _ in range(6)]
    try:
        request = translate_pb2.TranslateRequest(model=common_pb2.ModelRef(name="translation"), text=LONG[3])
        unread = [translate_pb2_grpc.TranslationStub(c).Translate(request, timeout=60) for c in channels]
        # Each stream decoded its tokens and gave its slot back; its client has read nothing yet.
        assert wait_for(lambda: running.sample("seqserve_active_streams", method="Translate") >= 3)
        assert wait_for(lambda: running.sample("seqserve_stream_slots_in_use", graph="decoder_step") == 0)
        with Client(running.target, timeout=30) as client:
            assert list(client.translate_tokens("Open the file."))  # served while they stall
            # At write_timeout_s, the stalled streams are ended (logged), their status waiting behind what their
            # clients have not read; once they read it, they are counted.
            assert wait_for(lambda: running.sample("seqserve_active_streams") == 0, 10)
            codes = []
            for call in unread:
                with pytest.raises(grpc.RpcError) as error:
                    list(call)
                codes.append((error.value.code(), error.value.details()))
            stalled = [d for c, d in codes if c == grpc.StatusCode.DEADLINE_EXCEEDED and "write_timeout_s" in d]
            assert len(stalled) >= 3
            assert wait_for(lambda: running.sample("seqserve_sessions_ended_total", method="Translate",
                                                   reason="write_timeout") == len(stalled))
            assert all(c in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED) for c, _ in codes)

            # A stream whose client stops reading holds its slot only until write_timeout_s.
            def endless() -> Iterator[sentiment_pb2.SentimentChunk]:
                yield sentiment_pb2.SentimentChunk(model=common_pb2.ModelRef(name="sentiment"), text="good " * 99)
                time.sleep(30)

            held = [sentiment_pb2_grpc.SentimentStub(c).StreamSentiment(endless(), timeout=60) for c in channels[:4]]
            in_use = partial(running.sample, "seqserve_stream_slots_in_use", graph=sentiment_stream_graph())
            assert wait_for(lambda: in_use() == 4)
            assert wait_for(lambda: in_use() == 0, 10)
            assert [u.token for u in client.stream_sentiment(["a fine film"])] == ["a", "fine", "film"]
            for call in held:
                call.cancel()

            # A stream that reads and writes as it should is ended at max_stream_age_s all the same.
            def steady() -> Iterator[str]:
                while True:
                    yield "good "
                    time.sleep(0.2)

            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as error:
                list(client.stream_sentiment(steady()))
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "max_stream_age_s (4 s)" in error.value.details() and 3.5 < time.perf_counter() - started < 10
            assert wait_for(lambda: running.sample("seqserve_sessions_ended_total", reason="max_age") == 1)
            assert wait_for(running.idle)
            assert client.health() == "SERVING"
    finally:
        for channel in channels:
            channel.close()
        running.stop()
