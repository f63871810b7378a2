"""``python -m bench.long_text [--repeats 9]``: what a review-length sentiment text costs the server.

The text is the longest of the long-text set's ``mixed_400`` texts (test-split snippets), cut at a
space within 50,000 characters. In one command, against ``python -m server`` on ``models/``:

- ``Classify`` of the review, and the baseline: the reference runtime (``evaluate``, ONNX Runtime
  in this process, no gRPC) on the same text; the ratio of their medians;
- ``Classify`` of a one-snippet text, and of the review's first 64 tokens (what ``Classify``
  read before issue 14);
- ``StreamSentiment`` of the review in 4,096-character chunks (one update per token);
- one ``Classify`` of five reviews (``max_batch_tokens`` groups them), and the server's peak
  resident memory (``VmHWM``) after each part;
- health checks from a second client, for ``--seconds``, idle and then while the first client sends
  ``Classify`` requests of 70 reviews (3.3 MB) one after another: their median, 99th percentile and
  maximum, so what a large request costs the other calls.

Each time is the median of ``--repeats`` runs with its minimum and maximum.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from bench.load import serving
from client import Client
from contract.repository import load_repository
from contract.words import tokenize
from evaluate.check import DATA
from evaluate.sentiment import sentiment_probs
from protos.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc
from training.sentiment_data import review, split_snippets

CHARS, CHUNK = 50_000, 4_096


def texts(data: Path) -> tuple[str, str]:
    """The review and a one-snippet text."""
    test = split_snippets(data / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2")["test"]
    return review(test, CHARS), test.texts[0]


def timed(run: Callable[[], object], repeats: int) -> list[float]:
    run()  # warm
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return seconds


def show(name: str, seconds: list[float]) -> float:
    median = statistics.median(seconds)
    print(f"{name:48s} {median * 1000:9.1f} ms  ({min(seconds) * 1000:.1f}-{max(seconds) * 1000:.1f})", flush=True)
    return median


def peak_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.long_text", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=10.0, help="of health checks, idle and under load")
    args = parser.parse_args(argv)
    text, snippet = texts(args.data)
    first64 = " ".join(tokenize(text)[:64])
    model = max(load_repository(args.models)["sentiment"].items())[1]
    print(f"review: {len(text)} characters, {len(tokenize(text))} tokens; sentiment/{model.version}")
    with serving(args.models, max_batch=256) as served, grpc.insecure_channel(served.target) as channel:
        stub, ref = sentiment_pb2_grpc.SentimentStub(channel), common_pb2.ModelRef(name="sentiment")

        def classify(*texts: str) -> Callable[[], object]:
            return lambda: stub.Classify(sentiment_pb2.ClassifyRequest(model=ref, texts=list(texts)), timeout=120)

        def stream() -> object:
            chunks = (sentiment_pb2.SentimentChunk(model=ref if i == 0 else None, text=text[i : i + CHUNK])
                      for i in range(0, len(text), CHUNK))
            return sum(1 for _ in stub.StreamSentiment(chunks, timeout=600))

        print(f"server at start: peak RSS {peak_mib(served.pid):.0f} MiB")
        base = show("reference runtime (evaluate), the review", timed(lambda: sentiment_probs(model, [text]),
                                                                        args.repeats))
        served_s = show("Classify, the review", timed(classify(text), args.repeats))
        print(f"  ratio Classify / reference runtime: {served_s / base:.2f}; "
              f"server peak RSS {peak_mib(served.pid):.0f} MiB")
        show("Classify, one snippet", timed(classify(snippet), args.repeats))
        show("Classify, the review's first 64 tokens (old)", timed(classify(first64), args.repeats))
        show("StreamSentiment, the review", timed(stream, max(1, args.repeats // 3)))
        show("Classify, five reviews in one request", timed(classify(*[text] * 5), max(1, args.repeats // 3)))
        print(f"  server peak RSS {peak_mib(served.pid):.0f} MiB")
        idle = health_during(served.target, lambda: time.sleep(0.05), args.seconds)
        busy = health_during(served.target, classify(*[text] * 70), args.seconds)
        for name, seconds in (("idle", idle), ("70-review Classify requests", busy)):
            print(f"health, {name:28s} p50 {percentile(seconds, 50):6.1f} ms  p99 {percentile(seconds, 99):7.1f} ms  "
                  f"max {max(seconds) * 1000:7.1f} ms  ({len(seconds)} checks)")
        print(f"  ratios to idle: p50 {percentile(busy, 50) / percentile(idle, 50):.2f}, "
              f"p99 {percentile(busy, 99) / percentile(idle, 99):.2f}")


def percentile(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) * 1000


def health_during(target: str, load: Callable[[], object], seconds: float) -> list[float]:
    """Health check latencies of a second client while ``load`` runs again and again for ``seconds``."""
    stop, latencies = threading.Event(), []

    def check() -> None:
        with Client(target, timeout=120) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.health()
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)

    checker = threading.Thread(target=check)
    checker.start()
    try:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            load()
    finally:
        stop.set()
        checker.join()
    return latencies


if __name__ == "__main__":
    main()
