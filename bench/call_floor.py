"""``python -m bench.call_floor``: the least CPU a ``StreamSentiment`` call costs grpcio's asyncio server.

The floor serves the same method with one generic handler and nothing else (no interceptor, task, model or
metrics): for each chunk it reads, bytes left unparsed, it writes one reply made in advance, a
``SentimentUpdate`` of ``TOKENS`` token updates (about the test snippets' mean). Both servers get the same
closed-loop clients (``load.stream_sentiment``: one snippet per call, all its updates in one message), in turn,
round by round; each round gives tokens/s, calls/s and each server's CPU per call. What seqserve spends per call
beyond the floor is its own work (tokenizing, the model, the call's bookkeeping); the floor is gRPC's and asyncio's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from bench import load, workloads
from bench.idle_sessions import METHOD
from bench.stats import Run, Sustained
from protos.seqserve.v1 import sentiment_pb2

TOKENS = 22
REPLY = sentiment_pb2.SentimentUpdate(labels=["rotten", "fresh"], tokens=[
    sentiment_pb2.TokenSentiment(token="word", position=i, probabilities=[0.25, 0.75], positive=0.75)
    for i in range(TOKENS)]).SerializeToString()


async def session(requests: AsyncIterator[bytes], _: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for _chunk in requests:
        yield REPLY


def per_call_us(run: Run) -> float:
    return run.server_cpu_s / run.requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.call_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--streams", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(load.serve_bare(args.serve, {METHOD: grpc.stream_stream_rpc_method_handler(session)}))
        return
    model_dir = workloads.newest_version(args.models, "sentiment")
    workload = workloads.sentiment(model_dir, 100_000)
    closed = Sustained(args.streams, args.duration, args.warmup)
    runs: dict[str, list[Run]] = {"seqserve": [], "grpc floor": []}
    with load.serving(args.models, 256) as served, load.bare_serving("bench.call_floor", "--serve") as bare:
        systems = {"seqserve": served, "grpc floor": bare}
        print(f"{args.streams} closed-loop StreamSentiment clients, one snippet per call ({model_dir}), "
              f"{args.duration:g} s after {args.warmup:g} s, {args.repeats} rounds", flush=True)
        for round_ in range(args.repeats):
            for name in list(systems)[round_ % 2:] + list(systems)[: round_ % 2]:
                run = load.stream_sentiment(systems[name], workload, closed=closed, tokens_per_message=TOKENS * 3)
                runs[name].append(run)
                print(f"round {round_ + 1} {name}: {run.tokens_per_s:.0f} tokens/s, {run.requests / run.seconds:.0f} "
                      f"calls/s, server CPU {per_call_us(run):.0f} µs per call", flush=True)
    for name, done in runs.items():
        calls = [per_call_us(r) for r in done]
        print(f"{name}: median {statistics.median(r.requests / r.seconds for r in done):.0f} calls/s, server CPU "
              f"{statistics.median(calls):.0f} µs per call (range {min(calls):.0f}–{max(calls):.0f})")
    ratio = [per_call_us(a) / per_call_us(b) for a, b in zip(runs["seqserve"], runs["grpc floor"], strict=True)]
    print(f"seqserve ÷ floor, CPU per call, paired by round: median {statistics.median(ratio):.2f} "
          f"(range {min(ratio):.2f}–{max(ratio):.2f})")


if __name__ == "__main__":
    main()
