"""The shutdown sequence of ``python -m server`` on SIGTERM (docs/server.md, Lifecycle).

Health turns NOT_SERVING first and stays answerable for ``drain_s`` (calls are still served); then
new calls are refused and health watches end; open streams get ``grace_s``, and those still open
get UNAVAILABLE "the server is shutting down"; then the process exits 0. A health watch alone
does not hold shutdown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import MODELS, Process, wait_for

from client import Client
from protos.seqserve.v1 import common_pb2, sentiment_pb2

pytestmark = pytest.mark.skipif(not (MODELS / "sentiment").is_dir(), reason=f"no sentiment model in {MODELS}")
DRAIN, GRACE = 1.5, 2.0


class Recorder(threading.Thread):
    """Runs ``work(record)`` in a thread; ``record(what)`` notes what happened and when."""

    def __init__(self, work) -> None:
        super().__init__(daemon=True)
        self.work, self.events = work, []

    def record(self, what) -> None:
        self.events.append((time.monotonic(), what))

    def run(self) -> None:
        try:
            self.work(self.record)
        except grpc.RpcError as error:
            self.record((error.code(), error.details()))


def watch(target: str):
    def work(record) -> None:
        with grpc.insecure_channel(target) as channel:
            for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60):
                record(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return Recorder(work)


def test_sigterm_drains_then_refuses_then_ends_open_streams_with_unavailable() -> None:
    server = Process("--drain-s", str(DRAIN), "--grace-s", str(GRACE))
    stop = threading.Event()

    def poll(record) -> None:
        with Client(server.target, timeout=1) as client:
            while not stop.is_set():
                try:
                    record(client.health())
                except grpc.RpcError as error:
                    record(error.code())
                time.sleep(0.05)

    def hang(record) -> None:  # a stream that its client never closes
        def chunks() -> Iterator[sentiment_pb2.SentimentChunk]:
            yield sentiment_pb2.SentimentChunk(model=common_pb2.ModelRef(name="sentiment"), text="so far so good ")
            stop.wait(60)

        with Client(server.target, timeout=60) as client:
            for update in client.sentiment.StreamSentiment(chunks()):
                record(update.token)

    watcher, poller, stream = watch(server.target), Recorder(poll), Recorder(hang)
    try:
        for thread in (watcher, poller, stream):
            thread.start()
        assert server.wait_for_sample("seqserve_active_streams", 1)
        # the poller's first answer comes before the signal (its channel may connect late on a loaded machine)
        assert wait_for(lambda: any(what == "SERVING" for _, what in poller.events), timeout=10)
        with Client(server.target, timeout=10) as client:
            signalled = time.monotonic()
            server.terminate()
            time.sleep(DRAIN / 3)
            assert client.health() == "NOT_SERVING"
            assert client.classify(["Still served while draining."]).results  # load balancers still send calls
            time.sleep(DRAIN)
            with pytest.raises(grpc.RpcError) as error:
                client.classify(["Too late."])
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.wait(DRAIN + GRACE + 20) == 0
        exited = time.monotonic()
    finally:
        stop.set()
        server.kill()
    for thread in (watcher, poller, stream):
        thread.join(10)
    # The poller saw SERVING, then NOT_SERVING for the drain, then nothing served.
    statuses = [what for _, what in poller.events]
    first_not_serving = statuses.index("NOT_SERVING")
    assert "SERVING" in statuses[:first_not_serving] and grpc.StatusCode.UNAVAILABLE in statuses[first_not_serving:]
    seen = [at for at, what in poller.events if what == "NOT_SERVING"]
    assert seen[-1] - seen[0] > DRAIN / 2
    # The watch got NOT_SERVING, then ended when calls were refused, not at the end of the grace period.
    assert [what for _, what in watcher.events][:2] == ["SERVING", "NOT_SERVING"]
    ended_at, (code, _) = watcher.events[-1]
    assert code == grpc.StatusCode.UNAVAILABLE and ended_at - signalled < DRAIN + GRACE / 2
    # The stream still open at the end of the grace period got a retryable status saying why.
    ended_at, (code, details) = stream.events[-1]
    assert [what for _, what in stream.events[:-1]] == ["so", "far", "so", "good"]
    assert code == grpc.StatusCode.UNAVAILABLE and details == "the server is shutting down: retry the call"
    assert DRAIN + GRACE - 0.5 < ended_at - signalled < exited - signalled + 0.5
    assert any("stopped" in line for line in server.lines)
    assert not any("Traceback" in line or "ERROR" in line for line in server.lines), "\n".join(server.lines)


def test_a_health_watch_does_not_hold_shutdown() -> None:
    server = Process("--drain-s", "0.2", "--grace-s", "30")
    watcher = watch(server.target)
    try:
        watcher.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        server.terminate()
        assert server.wait(20) == 0
        assert time.monotonic() - signalled < 10  # not the 30 s grace period
    finally:
        server.kill()
    watcher.join(10)
    assert watcher.events[-1][1][0] == grpc.StatusCode.UNAVAILABLE
