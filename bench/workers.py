"""``python -m bench.workers``: greedy Translate throughput with ``--workers 1`` against ``--workers 2``, paired.

Both servers (``python -m server``, ``load.serving``) get the same closed loop: ``--streams`` clients, each on one of
``--connections`` HTTP/2 connections (the kernel hands each connection to one worker, SO_REUSEPORT), start their
next Translate of a LibreOffice-help test sentence as soon as the last ends, for ``--seconds`` after a warm-up.
The systems alternate repeat by repeat so that both see the same machine load; it prints tokens/s and the server's
CPU per token (the supervisor and its workers) for each, and the ratio of 2 workers to 1 per repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import grpc

from bench import load, workloads
from protos.seqserve.v1 import common_pb2, translate_pb2, translate_pb2_grpc

WARM_UP_S = 2.0


def server_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its child processes (the workers) so far."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    ticks = 0
    for one in [pid, *map(int, children)]:
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def closed_loop(served: load.Served, texts: list[str], streams: int, connections: int,
                      seconds: float) -> tuple[float, float]:
    """Tokens per second and server CPU microseconds per token over ``seconds`` of the closed loop."""
    channels = [grpc.aio.insecure_channel(served.target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    ref = common_pb2.ModelRef(name="translation")
    counted = {"tokens": 0, "on": False}
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 60) for c in channels))

        async def client(index: int, end: float) -> None:
            stub = translate_pb2_grpc.TranslationStub(channels[index % connections])
            text = texts[index % len(texts)]
            while time.perf_counter() < end:
                async for update in stub.Translate(translate_pb2.TranslateRequest(model=ref, text=text)):
                    if counted["on"]:
                        counted["tokens"] += len(update.tokens)

        async def window() -> tuple[float, float]:
            await asyncio.sleep(WARM_UP_S)
            cpu, started, counted["on"] = server_cpu_s(served.pid), time.perf_counter(), True
            await asyncio.sleep(seconds)
            counted["on"] = False
            return time.perf_counter() - started, server_cpu_s(served.pid) - cpu

        end = time.perf_counter() + WARM_UP_S + seconds
        (elapsed, cpu), *_ = await asyncio.gather(window(), *(client(i, end) for i in range(streams)))
        return counted["tokens"] / elapsed, cpu / counted["tokens"] * 1e6
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="the count compared with 1")
    args = parser.parse_args()
    texts = workloads.translation(workloads.newest_version(args.models, "translation"), args.streams).texts
    counts = (1, args.workers)
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    print(f"{args.streams} greedy Translate streams over {args.connections} connections, closed loop for "
          f"{args.seconds:g} s after {WARM_UP_S:g} s, {os.cpu_count()} cores")
    for repeat in range(args.repeats):
        for n in counts:
            with load.serving(args.models, 256, ["--workers", str(n)]) as served:
                tokens_per_s, cpu_us = asyncio.run(closed_loop(served, texts, args.streams, args.connections,
                                                               args.seconds))
            results[n].append((tokens_per_s, cpu_us))
            print(f"repeat {repeat + 1}, workers {n}: {tokens_per_s:,.0f} tokens/s, server CPU {cpu_us:.0f} µs/token")
    for n in counts:
        rates = [r for r, _ in results[n]]
        cpu = [c for _, c in results[n]]
        print(f"workers {n}: median {statistics.median(rates):,.0f} tokens/s (range {min(rates):,.0f} to "
              f"{max(rates):,.0f}), server CPU median {statistics.median(cpu):.0f} µs/token")
    ratios = [a[0] / b[0] for a, b in zip(results[args.workers], results[1], strict=True)]
    print(f"workers {args.workers} / workers 1, tokens/s per repeat: " + ", ".join(f"{r:.2f}" for r in ratios) +
          f"; median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
