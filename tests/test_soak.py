"""The bounded soak: N mixed streams (greedy Translate and StreamSentiment) for T seconds against
``python -m server``.

Every stream's tokens must equal a solo run of the same text (StreamSentiment probabilities within
1e-5, Translate log-probabilities within 1e-4: ORT may round differently at another batch size),
the gauges must return to 0, and the server's RSS must grow less than a bound between the end of
the warm-up (the first quarter) and the end. The suite runs 64 streams for 20 s; ``make soak``
runs the long one (``SEQSERVE_SOAK_STREAMS``, ``SEQSERVE_SOAK_SECONDS``, ``SEQSERVE_SOAK_RSS_MB``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import MODELS, Process

from protos.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc, translate_pb2, translate_pb2_grpc

pytestmark = pytest.mark.skipif(not all((MODELS / m).is_dir() for m in ("sentiment", "translation")),
                                reason=f"needs the shipped sentiment and translation models in {MODELS}")

STREAMS = int(os.environ.get("SEQSERVE_SOAK_STREAMS", "64"))
SECONDS = float(os.environ.get("SEQSERVE_SOAK_SECONDS", "20"))
RSS_MB = float(os.environ.get("SEQSERVE_SOAK_RSS_MB", "64"))
REVIEWS = [
    "A wonderful, moving film with a great cast.", "Dull, lifeless and far too long.",
    "It's not bad, but it isn't good either.", "The best thing I've seen this year!",
    "An overlong mess that never finds its footing, despite a few good jokes.",
    "Smart, funny and surprisingly tender: it earns every one of its tears.",
    "The plot makes no sense and the actors seem to know it.", "A small gem.",
]
SOURCES = [
    "The file could not be opened.", "Click the Save button to save the document.",
    "Select the cells that you want to copy.", "Choose Format - Cells and click the Numbers tab.",
    "The dialog shows the properties of the selected object.", "Insert a table at the cursor position.",
    "Are you coming to dinner tonight?", "If the text is too long, the rest is hidden.",
]


def rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024


async def sentiment(channel: grpc.aio.Channel, text: str) -> list[tuple[str, tuple[float, ...]]]:
    ref = common_pb2.ModelRef(name="sentiment")
    chunks = [sentiment_pb2.SentimentChunk(model=ref if i == 0 else None, text=text[i : i + 7])
              for i in range(0, len(text), 7)]
    stub = sentiment_pb2_grpc.SentimentStub(channel)
    return [(u.token, tuple(u.probabilities)) async for u in stub.StreamSentiment(iter(chunks), timeout=60)]


async def translate(channel: grpc.aio.Channel, text: str) -> list[tuple[int, float]]:
    request = translate_pb2.TranslateRequest(model=common_pb2.ModelRef(name="translation"), text=text)
    stub = translate_pb2_grpc.TranslationStub(channel)
    return [(t.token_id, t.log_prob) async for u in stub.Translate(request, timeout=60) for t in u.tokens]


def same(solo: list[tuple], among: list[tuple], tolerance: float) -> bool:
    if [a[0] for a in solo] != [b[0] for b in among]:
        return False
    return all(np.allclose(a[1], b[1], atol=tolerance, rtol=0) for a, b in zip(solo, among, strict=True))


async def soak(target: str, pid: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(target) as channel:
        solo = {("sentiment", t): await sentiment(channel, t) for t in REVIEWS}
        solo |= {("translate", t): await translate(channel, t) for t in SOURCES}
        started = time.monotonic()
        end, warm = started + SECONDS, started + SECONDS / 4
        counts = {"streams": 0, "tokens": 0, "mismatches": 0, "rss_warm": 0.0}

        async def worker(index: int) -> None:
            kind, texts, run, tolerance = (("sentiment", REVIEWS, sentiment, 1e-5) if index % 2 else
                                           ("translate", SOURCES, translate, 1e-4))
            for text in itertools.islice(itertools.cycle(texts), index, None):
                if time.monotonic() >= end:
                    return
                got = await run(channel, text)
                counts["streams"] += 1
                counts["tokens"] += len(got)
                counts["mismatches"] += not same(solo[kind, text], got, tolerance)

        async def sample_rss() -> None:
            await asyncio.sleep(warm - time.monotonic())
            counts["rss_warm"] = rss_mb(pid)

        await asyncio.gather(sample_rss(), *(worker(i) for i in range(STREAMS)))
        counts["seconds"] = time.monotonic() - started
        return counts


def test_soak() -> None:
    server = Process("--max-streams", str(max(256, STREAMS)))
    try:
        counts = asyncio.run(soak(server.target, server.process.pid))
        assert server.wait_for_sample("seqserve_active_streams", 0)
        assert server.idle()
        rss_end = rss_mb(server.process.pid)
        failed = sum(server.sample("seqserve_requests_total", code=code.name) for code in grpc.StatusCode
                     if code != grpc.StatusCode.OK)
    finally:
        server.stop()
    growth = rss_end - counts["rss_warm"]
    print(f"soak: {STREAMS} streams for {counts['seconds']:.0f} s: {counts['streams']:.0f} streams, "
          f"{counts['tokens'] / counts['seconds']:.0f} tokens/s, RSS {counts['rss_warm']:.0f} -> {rss_end:.0f} MB "
          f"({growth:+.1f}), {counts['mismatches']:.0f} mismatches, {failed:.0f} failed calls")
    assert counts["streams"] >= STREAMS and counts["mismatches"] == 0 and failed == 0
    assert growth < RSS_MB
    assert server.wait(1) == 0
