"""``python -m server --workers 2``: two server processes on one port under a supervisor.

Clients on separate connections (the kernel hands each connection to one worker, SO_REUSEPORT) run many
concurrent StreamSentiment and Translate streams: each equals its solo run, both workers do work, and the
supervisor's one ``/metrics`` page adds both up (requests as sent, gauges back to 0). SIGTERM drains both workers
(open streams finish, health turns NOT_SERVING on every connection); a worker that dies stops the server with exit
code 1.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tempfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import MODELS, Process, newest, wait_for
from test_soak import REVIEWS, SOURCES, same, sentiment, translate

from protos.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc, translate_pb2, translate_pb2_grpc
from server.config import Config
from server.workers import threads

pytestmark = pytest.mark.skipif(not all((MODELS / m).is_dir() for m in ("sentiment", "translation")),
                                reason=f"needs the shipped sentiment and translation models in {MODELS}")

CONNECTIONS = 16  # all on one worker by chance: 2 in 2^16
STREAMS = 64
STARTED = re.compile(r"started worker (\d) \(pid (\d+)\)")


def channels(target: str) -> list[grpc.aio.Channel]:
    """``CONNECTIONS`` channels, each on its own connection (gRPC shares one between equal channels otherwise)."""
    return [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)]


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of ``pid`` in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def worker_pids(server: Process) -> list[int]:
    return [int(m.group(2)) for line in server.lines if (m := STARTED.search(line))]


async def health(target: str) -> list[int]:
    """The health status of the whole server, asked on ``CONNECTIONS`` connections."""
    opened = channels(target)
    try:
        return [(await health_pb2_grpc.HealthStub(c).Check(health_pb2.HealthCheckRequest(), timeout=10)).status
                for c in opened]
    finally:
        await asyncio.gather(*(c.close() for c in opened))


async def run_streams(target: str) -> tuple[int, int]:
    """Solo runs on one connection, then ``STREAMS`` concurrent ones over ``CONNECTIONS``: (calls, mismatches)."""
    async with grpc.aio.insecure_channel(target) as channel:
        solo = {("sentiment", t): await sentiment(channel, t) for t in REVIEWS}
        solo |= {("translate", t): await translate(channel, t) for t in SOURCES}
    opened = channels(target)

    async def one(index: int) -> bool:
        channel = opened[index % CONNECTIONS]
        if index % 2:
            text = REVIEWS[index % len(REVIEWS)]
            return same(solo["sentiment", text], await sentiment(channel, text), 1e-5)
        text = SOURCES[index % len(SOURCES)]
        return same(solo["translate", text], await translate(channel, text), 1e-4)

    try:
        matched = await asyncio.gather(*(one(i) for i in range(STREAMS)))
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    return len(solo) + STREAMS, matched.count(False)


async def held_session(server: Process) -> tuple[bool, float]:
    """One idle StreamSentiment session: whether the page shows its slot (a gauge read when scraped, which each
    worker writes every second) and the active streams meanwhile; then it ends."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = sentiment_pb2_grpc.SentimentStub(channel).StreamSentiment()
        await call.write(sentiment_pb2.SentimentChunk(model=common_pb2.ModelRef(name="sentiment"), text="idle"))
        held = await asyncio.to_thread(server.wait_for_sample, "seqserve_stream_slots_in_use", 1, model="sentiment")
        active = await asyncio.to_thread(server.sample, "seqserve_active_streams", model="sentiment")
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    return held, active


def test_each_worker_gets_a_share_of_the_threads() -> None:
    assert threads(Config(workers=2, intra_op_threads=2)) == 1
    assert threads(Config(workers=3, intra_op_threads=8)) == 2
    assert threads(Config(workers=4, intra_op_threads=2)) == 1
    assert threads(Config(workers=2, intra_op_threads=0)) == max(1, (os.cpu_count() or 1) // 2)


def test_streams_across_two_workers_equal_solo_runs_and_metrics_add_up() -> None:
    server = Process("--workers", "2", "--max-streams", "64")
    try:
        pids = worker_pids(server)
        assert len(pids) == 2 and server.process.pid not in pids
        assert asyncio.run(health(server.target)) == [health_pb2.HealthCheckResponse.SERVING] * CONNECTIONS
        # Each worker's model_info is 1 and the page shows one; each holds max_streams slots and the page adds them.
        version = str(newest("sentiment").version)
        assert server.sample("seqserve_model_info", model="sentiment", version=version) == 1
        assert server.sample("seqserve_stream_slots", model="sentiment", version=version) == 2 * 64
        assert asyncio.run(held_session(server)) == (True, 1)
        assert wait_for(server.idle), "the held session's slot was not given back"
        before = server.sample("seqserve_requests_total", code="OK")
        ticks = [cpu_ticks(pid) for pid in pids]
        calls, mismatches = asyncio.run(run_streams(server.target))
        used = [cpu_ticks(pid) - start for pid, start in zip(pids, ticks, strict=True)]
        assert mismatches == 0
        assert server.sample("seqserve_requests_total", code="OK") - before == calls
        assert server.sample("seqserve_requests_total") - before == calls  # and no other code
        assert server.wait_for_sample("seqserve_active_streams", 0)
        assert wait_for(server.idle), "the slots in use did not return to 0"
        # Both did work: a worker that gets no connection uses no CPU tick meanwhile (measured: 0 against 44 for the
        # other), one that gets 1 of the 16 (the least but for 2 in 2^16) about 3.
        assert min(used) >= 2, f"CPU ticks (10 ms) per worker during the streams: {used}"
    finally:
        server.stop()
    assert server.wait(1) == 0


async def drain(server: Process) -> tuple[int, list[int]]:
    """A Translate stream on every connection, SIGTERM once each has begun: (mismatches, health during the drain)."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        solo = {t: await translate(channel, t) for t in SOURCES}
    opened = channels(server.target)
    begun = asyncio.Semaphore(0)

    async def one(index: int) -> bool:
        text = SOURCES[index % len(SOURCES)]
        request = translate_pb2.TranslateRequest(model=common_pb2.ModelRef(name="translation"), text=text)
        got: list[tuple[int, float]] = []
        async for update in translate_pb2_grpc.TranslationStub(opened[index]).Translate(request, timeout=60):
            if not got:
                begun.release()
            got.extend((t.token_id, t.log_prob) for t in update.tokens)
        return same(solo[text], got, 1e-4)

    streams = [asyncio.create_task(one(i)) for i in range(CONNECTIONS)]
    try:
        for _ in streams:
            await begun.acquire()
        server.terminate()
        await asyncio.sleep(0.5)
        during = await health(server.target)
        matched = await asyncio.gather(*streams)
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    return matched.count(False), during


def test_sigterm_drains_every_worker() -> None:
    """Health turns NOT_SERVING on every connection while open streams finish; each worker and the supervisor
    stop cleanly, and the metrics folder is gone."""
    server = Process("--workers", "2", "--drain-s", "3")
    try:
        folder = Path(tempfile.gettempdir())
        before = set(folder.glob("seqserve-metrics-*"))
        mismatches, during = asyncio.run(drain(server))
        code = server.wait(30)
    finally:
        server.stop()
    assert mismatches == 0
    assert during == [health_pb2.HealthCheckResponse.NOT_SERVING] * CONNECTIONS
    assert code == 0, "\n".join(server.lines[-20:])
    for index in (0, 1):
        assert any(f"worker {index}: NOT_SERVING: draining for 3 s" in line for line in server.lines)
        assert any(line.endswith(f"worker {index}: stopped") for line in server.lines)
    assert server.lines[-1].endswith("server: stopped")
    assert set(folder.glob("seqserve-metrics-*")) <= before


def test_a_worker_that_dies_stops_the_server_with_exit_code_1() -> None:
    server = Process("--workers", "2", "--drain-s", "0")
    try:
        pids = worker_pids(server)
        os.kill(pids[0], signal.SIGKILL)
        code = server.wait(30)
    finally:
        server.stop()
    assert code == 1
    assert any(f"worker 0 (pid {pids[0]}) ended on its own with exit code -9" in line for line in server.lines)
    assert any(line.endswith("worker 1: stopped") for line in server.lines)
    assert not Path(f"/proc/{pids[1]}").exists()
