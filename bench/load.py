"""The load generator: the real server in a subprocess, ``N`` concurrent gRPC streams against it.

Client and server share the machine's cores, as they would in a single-host deployment; the
client's cost (one asyncio loop parsing every message) is part of what is measured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from bench.stats import Run
from bench.workloads import Workload
from server.gen.grpc.health.v1 import health_pb2, health_pb2_grpc
from server.gen.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc, translate_pb2, translate_pb2_grpc

STREAMS_PER_CHANNEL = 64  # HTTP/2 connections share the load the way several clients would


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(models: Path, max_batch: int, startup_s: float = 120.0) -> Iterator[str]:
    """``python -m server`` on a free port until the block ends; yields its target once health says SERVING."""
    port = free_port()
    command = [sys.executable, "-m", "server", "--models", str(models), "--host", "127.0.0.1", "--port", str(port),
               "--metrics-port", "-1", "--max-batch", str(max_batch), "--log-level", "WARNING"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        target = f"127.0.0.1:{port}"
        try:
            _wait_serving(target, process, startup_s)
            yield target
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_serving(target: str, process: subprocess.Popen, startup_s: float) -> None:
    deadline = time.monotonic() + startup_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"the server at {target} was not SERVING after {startup_s:.0f} s")


async def _streams(target: str, count: int, one) -> Run:
    """Start ``count`` streams at once (``one(channel, index, started, arrivals)``); time until all end."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(-(-count // STREAMS_PER_CHANNEL))]
    try:
        await asyncio.gather(*(c.channel_ready() for c in channels))
        arrivals: list[list[float]] = [[] for _ in range(count)]
        started = time.perf_counter()
        await asyncio.gather(*(one(channels[i // STREAMS_PER_CHANNEL], i, started, arrivals[i]) for i in range(count)))
        return Run(arrivals, time.perf_counter() - started)
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def translate(target: str, workload: Workload) -> Run:
    """Greedy ``Translate`` streams, one message per token."""
    ref = common_pb2.ModelRef(name=workload.model_dir.parent.name)

    async def one(channel: grpc.aio.Channel, index: int, started: float, arrivals: list[float]) -> None:
        stub = translate_pb2_grpc.TranslationStub(channel)
        async for _ in stub.Translate(translate_pb2.TranslateRequest(model=ref, text=workload.texts[index])):
            arrivals.append(time.perf_counter() - started)

    return asyncio.run(_streams(target, len(workload.texts), one))


def translate_whole(target: str, workload: Workload) -> Run:
    """The same decoding with one message per translation (``TranslateBatch`` of one text per call).

    This is the far end of sending several tokens per message: the engine batches the ``N``
    calls' steps exactly as for ``Translate``, but each call answers once. All of a call's
    tokens count as arriving with that message, so only throughput is meaningful here.
    """
    ref = common_pb2.ModelRef(name=workload.model_dir.parent.name)

    async def one(channel: grpc.aio.Channel, index: int, started: float, arrivals: list[float]) -> None:
        stub = translate_pb2_grpc.TranslationStub(channel)
        reply = await stub.TranslateBatch(translate_pb2.TranslateBatchRequest(model=ref, texts=[workload.texts[index]]))
        arrivals.extend([time.perf_counter() - started] * len(reply.translations[0].token_ids))

    return asyncio.run(_streams(target, len(workload.texts), one))


def stream_sentiment(target: str, workload: Workload) -> Run:
    """``StreamSentiment`` streams: the whole snippet as one chunk, one update per token back."""
    ref = common_pb2.ModelRef(name=workload.model_dir.parent.name)

    async def one(channel: grpc.aio.Channel, index: int, started: float, arrivals: list[float]) -> None:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        chunks = iter([sentiment_pb2.SentimentChunk(model=ref, text=workload.texts[index])])
        async for _ in stub.StreamSentiment(chunks):
            arrivals.append(time.perf_counter() - started)

    return asyncio.run(_streams(target, len(workload.texts), one))
