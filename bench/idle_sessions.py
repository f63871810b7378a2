"""``python -m bench.idle_sessions``: the server's memory per open idle ``StreamSentiment`` session, beyond its state.

Each repeat starts ``python -m server`` (``load.serving``), opens one session and closes it (so that what the first
call creates once, metric children and gRPC's own structures, is not counted), reads the server's resident memory
(``VmRSS``), then opens ``--sessions`` sessions over ``--connections`` HTTP/2 connections. Each sends its first
chunk (the model and a word that is not complete yet, so that no update comes back) and then nothing: it holds a
state slot and stays open. Once ``seqserve_stream_slots_in_use`` says all hold one, it reads ``VmRSS`` again and
subtracts the state rows those sessions hold (the model's state tensors, from its manifest: the pool is allocated
at start, and its pages become resident as rows are first written):

    per session = (RSS with the sessions - RSS before - sessions x state bytes) / sessions

Repeats are separate server processes (allocators keep freed memory, so a second round in one process would show
less); it prints each and the median with the range.

``--floor`` measures gRPC's own share the same way, on the least server grpcio's asyncio API allows: one generic
handler on the same method (``Floor``: no interceptor, no service, no state) that reads the first chunk and
waits for the next. What seqserve
allocates beyond it is its own, which the server can cut; the floor is not.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np

from bench import load
from bench.workloads import newest_version
from contract.repository import read_manifest
from protos.inference import kserve_pb2, kserve_pb2_grpc
from protos.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc
from server.app import Server
from server.config import Config

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]

KINDS = {"seqserve": "StreamSentiment sessions", "kserve": "KServe sentiment sequences"}
METHOD = "/seqserve.v1.Sentiment/StreamSentiment"
COUNT = "/floor/Open"  # the floor's count of open sessions
WORD = "idle"  # not complete until more text or the end of the stream: no update comes back


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M).group(1)) * 1024


def state_bytes(model: Path) -> int:
    """Bytes of state per StreamSentiment session: every state tensor of the stream graph, one row."""
    manifest = read_manifest(model)
    graph = manifest.preprocessing.stream_graph
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in manifest.state_of(graph))


def slots_in_use(metrics_port: int) -> float:
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r'^seqserve_stream_slots_in_use\{[^}]*model="sentiment"[^}]*\} (\S+)$',
                                            page, re.M))


async def wait_for_slots(metrics_port: int, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (held := await asyncio.to_thread(slots_in_use, metrics_port)) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{held:.0f} of {count} sessions hold a slot after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def close(call: grpc.aio.StreamStreamCall) -> None:
    """End a session as a client would: no more chunks, then its last update (the word, now complete)."""
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass


class Floor:
    """The least idle session grpcio's asyncio server holds: a generic handler that reads the first chunk (bytes,
    not parsed) and waits for the next; ``COUNT`` says how many have read their first."""

    def __init__(self) -> None:
        self.open = 0

    async def session(self, _: object, context: grpc.aio.ServicerContext) -> None:
        await context.read()
        self.open += 1
        await context.read()
        self.open -= 1

    async def count(self, *_: object) -> bytes:
        return str(self.open).encode()


async def floor(port: int) -> None:
    floor = Floor()
    await load.serve_bare(port, {METHOD: grpc.stream_stream_rpc_method_handler(floor.session),
                                 COUNT: grpc.unary_unary_rpc_method_handler(floor.count)})


def sequence_request(sequence_id: int, start: bool, end: bool) -> kserve_pb2.ModelInferRequest:
    """A KServe ``ModelInfer`` request of sentiment sequence ``sequence_id`` whose text is ``WORD``."""
    contents = kserve_pb2.InferTensorContents(bytes_contents=[WORD.encode()])
    text = kserve_pb2.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1], contents=contents)
    request = kserve_pb2.ModelInferRequest(model_name="sentiment", inputs=[text])
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    return request


async def sessions(target: str, metrics_port: int, count: int, connections: int,
                   measure: Callable[[], Awaitable[T]], protocol: str = "seqserve") -> tuple[T, T]:
    """Open ``count`` idle sessions (after one per connection opened and closed): ``measure()`` before and with
    them, once the server says all are open (seqserve: its slots in use; ``metrics_port`` -1: the floor's count).

    A session is a ``StreamSentiment`` call whose first chunk has come, or (``protocol`` "kserve") a KServe sequence
    whose START request (``ModelInfer``) has been answered: no call stays open, the server keeps its state."""
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    first = sentiment_pb2.SentimentChunk(model=common_pb2.ModelRef(name="sentiment"), text=WORD)
    kserve = [kserve_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 60) for c in channels))
        for index, channel in enumerate(channels):  # what the first call on a connection creates once
            if protocol == "kserve":
                await kserve[index].ModelInfer(sequence_request(count + 1 + index, True, True))
            else:
                [_ async for _ in sentiment_pb2_grpc.SentimentStub(channel).StreamSentiment(iter([first]))]
        if metrics_port >= 0:
            await wait_for_slots(metrics_port, 0)
        await asyncio.sleep(1.0)  # let the server settle
        before = await measure()
        calls = []
        for index in range(count):
            if protocol == "kserve":
                await kserve[index % connections].ModelInfer(sequence_request(index + 1, True, False))
                continue
            call = sentiment_pb2_grpc.SentimentStub(channels[index % connections]).StreamSentiment()
            await call.write(first)
            calls.append(call)
        if metrics_port >= 0:
            await wait_for_slots(metrics_port, count)
        else:
            while int(await channels[0].unary_unary(COUNT)(b"")) != count:
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        during = await measure()
        await asyncio.gather(*(close(call) for call in calls))
        for index in range(count if protocol == "kserve" else 0):
            await kserve[index % connections].ModelInfer(sequence_request(index + 1, False, True))
        return before, during
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def rss(args: argparse.Namespace) -> None:
    """The RSS measurement (module docstring), of seqserve and, with ``--floor``, of the floor, alternated."""
    state = state_bytes(newest_version(args.models, "sentiment"))
    extra = ["--max-streams", str(args.sessions), "--idle-timeout-s", "600", "--sequence-idle-timeout-s", "600"]
    print(f"{args.sessions} idle {KINDS[args.protocol]} over {args.connections} connections; state "
          f"{state} bytes per session")
    systems = {"seqserve": (lambda: load.serving(args.models, 256, extra), state)}
    if args.floor:
        systems["grpc floor"] = (lambda: load.bare_serving("bench.idle_sessions", "--serve-floor"), 0)
    figures: dict[str, list[float]] = {name: [] for name in systems}
    for repeat in range(args.repeats):
        for name, (serving, held) in systems.items():  # alternated: both see the same machine
            with serving() as served:
                async def measure(pid: int = served.pid) -> int:
                    return rss_bytes(pid)

                before, during = asyncio.run(sessions(served.target, served.metrics_port, args.sessions,
                                                      args.connections, measure, args.protocol))
            per = (during - before - args.sessions * held) / args.sessions
            figures[name].append(per)
            print(f"repeat {repeat + 1} {name}: RSS {before / 2**20:.1f} -> {during / 2**20:.1f} MiB "
                  f"(+{(during - before) / 2**10:.0f} KiB, state {args.sessions * held / 2**10:.0f} KiB): "
                  f"{per:.0f} bytes per session beyond its state")
    for name, values in figures.items():
        print(f"{name}: median {statistics.median(values):.0f} bytes per idle session beyond its state "
              f"(range {min(values):.0f} to {max(values):.0f}, {args.repeats} server processes)")


async def handshake() -> None:
    """``--client``: tell the tracing process to measure, and wait until it has."""
    print("measure", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def owner(traceback: tracemalloc.Traceback) -> str:
    """The innermost line of the server's own code that led to an allocation (and the line that made it), else
    ``gRPC and asyncio``: only their frames (grpcio's Cython code has none of its own)."""
    ours = [frame for frame in traceback if f"{ROOT}/server/" in frame.filename]
    if not ours:
        return "gRPC and asyncio (no frame of the server's)"
    where = f"{Path(ours[-1].filename).relative_to(ROOT)}:{ours[-1].lineno}"
    last = traceback[-1]
    return where if last is ours[-1] else f"{where} (in {Path(last.filename).name}:{last.lineno})"


def traced(args: argparse.Namespace) -> None:
    """``--tracemalloc``: the server in this process, traced, the client in another; Python bytes per session by
    the line of the server that allocated them."""
    tracemalloc.start(30)
    config = Config(models=str(args.models), port=0, metrics_port=0, max_streams=args.sessions,
                    idle_timeout_s=600, sequence_idle_timeout_s=600, log_level="WARNING")
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    async def start() -> Server:  # gRPC's server belongs to the loop it is made on
        server = Server(config)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(120)
    client = subprocess.Popen([sys.executable, "-m", "bench.idle_sessions", "--client", f"127.0.0.1:{server.port}",
                               str(server.metrics_port), "--sessions", str(args.sessions), "--connections",
                               str(args.connections), "--protocol", args.protocol],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    snapshots = []
    for _ in range(2):
        if client.stdout.readline().strip() != "measure":
            raise RuntimeError(f"the client ended with {client.wait()}")
        gc.collect()
        snapshots.append(tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]))
        client.stdin.write("\n")
        client.stdin.flush()
    client.wait(120)
    asyncio.run_coroutine_threadsafe(server.stop(0, 0), loop).result(60)
    owners: dict[str, list[int]] = {}
    for diff in snapshots[1].compare_to(snapshots[0], "traceback"):
        totals = owners.setdefault(owner(diff.traceback), [0, 0])
        totals[0] += diff.size_diff
        totals[1] += diff.count_diff
    n = args.sessions
    print(f"{n} idle {KINDS[args.protocol]}: {sum(t[0] for t in owners.values()) / n:.0f} bytes of Python objects "
          "per session (tracemalloc), by where they were allocated:")
    for name, (size, count) in sorted(owners.items(), key=lambda item: -item[1][0])[: args.top]:
        print(f"{size / n:8.0f} B {count / n:6.2f} objects  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_sessions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=10, help="HTTP/2 connections the sessions share")
    parser.add_argument("--repeats", type=int, default=3, help="server processes, one measurement each")
    parser.add_argument("--protocol", choices=sorted(KINDS), default="seqserve",
                        help="seqserve: open StreamSentiment calls; kserve: KServe sequences (no open call)")
    parser.add_argument("--floor", action="store_true", help="also measure gRPC's own share (see above)")
    parser.add_argument("--tracemalloc", action="store_true", help="Python objects per session by where the "
                        "server allocated them, instead of RSS")
    parser.add_argument("--top", type=int, default=25, help="--tracemalloc: the lines shown")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, metavar=("TARGET", "METRICS_PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        asyncio.run(floor(args.serve_floor))
    elif args.client:
        asyncio.run(sessions(args.client[0], int(args.client[1]), args.sessions, args.connections, handshake,
                             args.protocol))
    elif args.tracemalloc:
        traced(args)
    else:
        rss(args)


if __name__ == "__main__":
    main()
