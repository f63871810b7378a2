"""The load generator: the real server in a subprocess, ``N`` concurrent gRPC streams against it.

Client and server share the machine's cores, as they would in a single-host deployment; the
client's cost (one asyncio loop parsing every message) is part of what is measured.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stats import Request, Run, Sustained, windowed
from bench.workloads import Workload
from protos.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc, translate_pb2, translate_pb2_grpc

STREAMS_PER_CHANNEL = 64  # HTTP/2 connections share the load the way several clients would
ROOT = Path(__file__).resolve().parents[1]  # this checkout: its server is the one measured by default
# ``python -m server``, after saying which ``server`` package it imported (``serving`` checks it).
LAUNCH = ("import runpy, sys, server; print('seqserve-bench: server package', server.__path__[0], flush=True); "
          "runpy.run_module('server', run_name='__main__', alter_sys=True)")
REPORTED = re.compile(rb"^seqserve-bench: server package (.+)$", re.M)


def model_ref(workload: Workload) -> common_pb2.ModelRef:
    """The workload's model version, by name and number (not "the newest loaded")."""
    return common_pb2.ModelRef(name=workload.model_dir.parent.name, version=int(workload.model_dir.name))


@dataclass(frozen=True)
class Served:
    """A running server: its gRPC address, process id, Prometheus port and the ``server`` package it runs."""

    target: str
    pid: int
    metrics_port: int
    package: Path

    def cpu_s(self) -> float:
        """User plus system CPU seconds of the server process so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def step_totals(self, graph: str) -> tuple[float, float, float]:
        """Steps run, rows stepped and seconds spent in ``graph``'s batched steps so far (zeros for a server
        without metrics, ``metrics_port`` -1)."""
        if self.metrics_port < 0:
            return 0.0, 0.0, 0.0
        page = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()

        def total(metric: str) -> float:
            pattern = rf'^{metric}\{{[^}}]*graph="{graph}"[^}}]*\}} (\S+)$'
            return sum(float(v) for v in re.findall(pattern, page, flags=re.M))

        return (
            total("seqserve_batch_size_count"),
            total("seqserve_batch_size_sum"),
            total("seqserve_step_duration_seconds_sum"),
        )


async def serve_bare(port: int, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    """A bare ``grpc.aio`` server on ``port`` (a floor to measure seqserve against): ``handlers`` by full method
    name, ``/service/method``, and nothing else, until SIGTERM."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(name.split("/")[1], {name.split("/")[2]: handler})
        for name, handler in handlers.items()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


@contextmanager
def bare_serving(module: str, flag: str) -> Iterator[Served]:
    """``python -m <module> <flag> <port>``, a ``serve_bare`` server, on a free port until the block ends, once it
    accepts connections; it has no metrics (``metrics_port`` -1)."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", module, flag, str(port)])

    async def ready() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)

    try:
        asyncio.run(ready())
        yield Served(target, process.pid, -1, ROOT / (module.replace(".", "/") + ".py"))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(
    models: Path,
    max_batch: int,
    extra: Sequence[str] = (),
    startup_s: float = 120.0,
    root: Path = ROOT,
) -> Iterator[Served]:
    """The server of the checkout at ``root`` on free ports until the block ends, once its health says SERVING.

    It runs as ``python -m server`` with ``root`` as its working directory, so it imports that
    checkout's ``server`` package (ahead of this repository's editable install); the package it
    reports is checked to be ``root/server``. ``extra`` are more server flags (``--max-wait-ms 0``).
    """
    root = root.resolve()
    port, metrics_port = free_port(), free_port()
    command = [
        sys.executable,
        "-c",
        LAUNCH,
        "--models",
        str(models.resolve()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--max-batch",
        str(max_batch),
        "--log-level",
        "WARNING",
        *extra,
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            _wait_serving(f"127.0.0.1:{port}", process, startup_s)
            log.seek(0)
            reported = REPORTED.search(log.read())
            package = (root / reported.group(1).decode()).resolve() if reported else Path("?")
            if package != root / "server":
                raise RuntimeError(f"the server started in {root} runs the package {package}, not {root / 'server'}")
            yield Served(f"127.0.0.1:{port}", process.pid, metrics_port, package)
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


def _run(served: Served, workload: Workload, one, per_token: bool = True) -> Run:
    """Start one stream per text at once (``one(channel, index, started, arrivals)``); time until all end.

    Also records both processes' CPU time and the server's mean batch size and step time.
    """
    graph = workload.stream_graph

    async def streams() -> Run:
        count = len(workload.texts)
        channels = [grpc.aio.insecure_channel(served.target) for _ in range(-(-count // STREAMS_PER_CHANNEL))]
        try:
            await asyncio.gather(*(c.channel_ready() for c in channels))
            arrivals: list[list[float]] = [[] for _ in range(count)]
            steps, rows, busy = served.step_totals(graph)
            cpu, server_cpu = time.process_time(), served.cpu_s()
            started = time.perf_counter()
            await asyncio.gather(
                *(one(channels[i // STREAMS_PER_CHANNEL], i, started, arrivals[i]) for i in range(count))
            )
            seconds = time.perf_counter() - started
            cpu, server_cpu = time.process_time() - cpu, served.cpu_s() - server_cpu
            after = served.step_totals(graph)
            steps, rows, busy = after[0] - steps, after[1] - rows, after[2] - busy
            return Run(arrivals, seconds, cpu, server_cpu, per_token, rows / steps, busy / steps)
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    return asyncio.run(streams())


def closed_loop(served: Served, workload: Workload, one, sustained: Sustained) -> Run:
    """``sustained.clients`` closed-loop clients (``perf_analyzer``'s concurrency mode): each starts its next
    request (``one``, as in ``_run``) as soon as its last one ends, client ``i`` taking texts ``i``, ``i + clients``,
    … of ``workload`` round and round. Measured over ``sustained.seconds`` after ``sustained.warmup`` seconds
    (``stats.windowed``); the requests still running at the end are cancelled."""
    graph, clients = workload.stream_graph, sustained.clients

    async def client(channel: grpc.aio.Channel, first: int, requests: list[Request]) -> None:
        for index in itertools.count(first, clients):
            request = Request(time.perf_counter())
            requests.append(request)
            await one(channel, index % len(workload.texts), 0.0, request.arrivals)
            request.end = time.perf_counter()

    async def run() -> Run:
        channels = [grpc.aio.insecure_channel(served.target) for _ in range(-(-clients // STREAMS_PER_CHANNEL))]
        requests: list[Request] = []
        try:
            await asyncio.gather(*(c.channel_ready() for c in channels))
            tasks = [asyncio.create_task(client(channels[i // STREAMS_PER_CHANNEL], i, requests))
                     for i in range(clients)]
            await asyncio.sleep(sustained.warmup)
            totals, cpu, server_cpu, start = served.step_totals(graph), time.process_time(), served.cpu_s(), \
                time.perf_counter()
            await asyncio.sleep(sustained.seconds)
            end, cpu, server_cpu = time.perf_counter(), time.process_time() - cpu, served.cpu_s() - server_cpu
            steps, rows, busy = (b - a for a, b in zip(totals, served.step_totals(graph), strict=True))
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if not isinstance(outcome, asyncio.CancelledError):
                    raise RuntimeError(f"a closed-loop client failed: {outcome!r}")
            return windowed(requests, start, end, cpu, server_cpu, rows / steps if steps else math.nan,
                            busy / steps if steps else math.nan)
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    return asyncio.run(run())


def translate(served: Served, workload: Workload, tokens_per_message: int = 1, closed: Sustained | None = None,
              fill: bool = False) -> Run:
    """Greedy ``Translate`` streams with ``max_tokens_per_message`` (and ``fill_messages``): one token per message by
    default.

    A message's tokens all count as arriving with it. ``closed``: the sustained mode (``closed_loop``).
    """
    ref = model_ref(workload)
    options = translate_pb2.DecodeOptions(max_tokens_per_message=tokens_per_message, fill_messages=fill)

    async def one(channel: grpc.aio.Channel, index: int, started: float, arrivals: list[float]) -> None:
        stub = translate_pb2_grpc.TranslationStub(channel)
        request = translate_pb2.TranslateRequest(model=ref, text=workload.texts[index], options=options)
        async for update in stub.Translate(request):
            arrivals.extend([time.perf_counter() - started] * len(update.tokens))

    return _run(served, workload, one) if closed is None else closed_loop(served, workload, one, closed)


def translate_whole(served: Served, workload: Workload) -> Run:
    """The same decoding with one message per translation (``TranslateBatch`` of one text per call).

    This is the far end of sending several tokens per message: the engine batches the ``N``
    calls' steps exactly as for ``Translate``, but each call answers once. All of a call's
    tokens count as arriving with that message: its "time to first token" is the time to the
    whole translation, and it has no inter-token latency.
    """
    ref = model_ref(workload)

    async def one(channel: grpc.aio.Channel, index: int, started: float, arrivals: list[float]) -> None:
        stub = translate_pb2_grpc.TranslationStub(channel)
        reply = await stub.TranslateBatch(translate_pb2.TranslateBatchRequest(model=ref, texts=[workload.texts[index]]))
        arrivals.extend([time.perf_counter() - started] * len(reply.translations[0].token_ids))

    return _run(served, workload, one, per_token=False)


def stream_sentiment(served: Served, workload: Workload, closed: Sustained | None = None,
                     tokens_per_message: int = 1) -> Run:
    """``StreamSentiment`` streams: the whole snippet as one chunk, one update per token back (or
    ``max_tokens_per_message`` to a message; a message's tokens all count as arriving with it). ``closed``: as
    ``translate``'s."""
    ref = model_ref(workload)

    async def one(channel: grpc.aio.Channel, index: int, started: float, arrivals: list[float]) -> None:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        chunks = iter([sentiment_pb2.SentimentChunk(model=ref, text=workload.texts[index],
                                                    max_tokens_per_message=tokens_per_message)])
        async for update in stub.StreamSentiment(chunks):
            arrivals.extend([time.perf_counter() - started] * (len(update.tokens) or 1))

    return _run(served, workload, one) if closed is None else closed_loop(served, workload, one, closed)
