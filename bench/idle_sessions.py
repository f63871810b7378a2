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
handler on the same method (``floor``: no interceptor, no service, no state) that reads the first chunk, answers
it with an empty message (how the client knows every session is open) and waits for the next. What seqserve
allocates beyond it is its own, which the server can cut; the floor is not.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np

from bench import load
from contract.repository import read_manifest
from protos.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc

METHOD = "/seqserve.v1.Sentiment/StreamSentiment"
WORD = "idle"  # not complete until more text or the end of the stream: no update comes back


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M).group(1)) * 1024


def state_bytes(model: Path) -> int:
    """Bytes of state per StreamSentiment session: every state tensor of the step graph, one row."""
    manifest = read_manifest(model)
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in manifest.state_of("step"))


def slots_in_use(served: load.Served) -> float:
    page = urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r'^seqserve_stream_slots_in_use\{[^}]*model="sentiment"[^}]*\} (\S+)$',
                                            page, re.M))


async def wait_for_slots(served: load.Served, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (held := slots_in_use(served)) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{held:.0f} of {count} sessions hold a slot after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def close(call: grpc.aio.StreamStreamCall) -> None:
    """End a session as a client would: no more chunks, then its last update (the word, now complete)."""
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass


async def floor_session(_: object, context: grpc.aio.ServicerContext) -> None:
    await context.read()
    await context.write(b"")
    await context.read()


async def floor(port: int) -> None:
    """The least idle session grpcio's asyncio server holds: a generic handler, bytes in and out."""
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(floor_session)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(METHOD.split("/")[1], {
        METHOD.split("/")[2]: handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


@contextmanager
def floor_serving() -> Iterator[load.Served]:
    port = load.free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.idle_sessions", "--serve-floor", str(port)])
    try:
        yield load.Served(f"127.0.0.1:{port}", process.pid, -1, Path(__file__))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


async def sessions(served: load.Served, count: int, connections: int, ref: common_pb2.ModelRef) -> tuple[int, int]:
    """Open ``count`` idle sessions (after one opened and closed); the server's RSS before and with them."""
    bare = served.metrics_port < 0  # the floor: it answers each first chunk instead of counting slots
    channels = [grpc.aio.insecure_channel(served.target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    first = sentiment_pb2.SentimentChunk(model=ref, text=WORD)
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 60) for c in channels))
        for channel in channels:  # one session per connection, closed: what the first call creates once
            [_ async for _ in sentiment_pb2_grpc.SentimentStub(channel).StreamSentiment(iter([first]))]
        if not bare:
            await wait_for_slots(served, 0)
        await asyncio.sleep(1.0)  # let the server settle
        before = rss_bytes(served.pid)
        calls = []
        for index in range(count):
            call = sentiment_pb2_grpc.SentimentStub(channels[index % connections]).StreamSentiment()
            await call.write(first)
            calls.append(call)
        if bare:
            await asyncio.gather(*(call.read() for call in calls))
        else:
            await wait_for_slots(served, count)
        await asyncio.sleep(1.0)
        during = rss_bytes(served.pid)
        await asyncio.gather(*(close(call) for call in calls))
        return before, during
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_sessions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=10, help="HTTP/2 connections the sessions share")
    parser.add_argument("--repeats", type=int, default=3, help="server processes, one measurement each")
    parser.add_argument("--floor", action="store_true", help="also measure gRPC's own share (see above)")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        asyncio.run(floor(args.serve_floor))
        return
    state = state_bytes(args.models / "sentiment" / "1")
    ref = common_pb2.ModelRef(name="sentiment")
    extra = ["--max-streams", str(args.sessions), "--idle-timeout-s", "600"]
    print(f"{args.sessions} idle StreamSentiment sessions over {args.connections} connections; state "
          f"{state} bytes per session")
    systems = {"seqserve": (lambda: load.serving(args.models, 256, extra), state)}
    if args.floor:
        systems["grpc floor"] = (floor_serving, 0)
    figures: dict[str, list[float]] = {name: [] for name in systems}
    for repeat in range(args.repeats):
        for name, (serving, held) in systems.items():  # alternated: both see the same machine
            with serving() as served:
                before, during = asyncio.run(sessions(served, args.sessions, args.connections, ref))
            per = (during - before - args.sessions * held) / args.sessions
            figures[name].append(per)
            print(f"repeat {repeat + 1} {name}: RSS {before / 2**20:.1f} -> {during / 2**20:.1f} MiB "
                  f"(+{(during - before) / 2**10:.0f} KiB, state {args.sessions * held / 2**10:.0f} KiB): "
                  f"{per:.0f} bytes per session beyond its state")
    for name, values in figures.items():
        print(f"{name}: median {statistics.median(values):.0f} bytes per idle session beyond its state "
              f"(range {min(values):.0f} to {max(values):.0f}, {args.repeats} server processes)")


if __name__ == "__main__":
    main()
