"""``workers`` > 1: a supervisor process and ``workers`` server processes on one port.

Each worker is a whole server (``server.app.serve``: its own streams, engine and health) started with ``spawn`` (a
fresh interpreter: no fork after gRPC or ONNX Runtime started threads). The kernel spreads connections among the
workers' listening sockets (SO_REUSEPORT); a worker listens only once it is warmed up. ONNX Runtime's intra-op
threads are split among the workers (``threads``). The supervisor serves ``/metrics`` for all of them
(prometheus-client's multiprocess mode, ``server/metrics.py``), from a temporary folder it owns and removes.

SIGTERM or SIGINT to the supervisor is forwarded to every worker, each of which runs the shutdown sequence (drain,
grace); the supervisor exits when they all have, 0 if each did cleanly. A worker that exits on its own (a crash,
the kernel's OOM killer) is not restarted: the supervisor stops the others the same way and exits 1, so that
whatever runs the server (Kubernetes, systemd, Docker) restarts the whole of it and records the failure.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client import multiprocess

from server import logs, metrics
from server.app import serve
from server.config import Config

log = logging.getLogger("server")
POLL_S = 0.2  # how often the supervisor looks at its signals when no worker reports


def threads(config: Config) -> int:
    """Each worker's ONNX Runtime intra-op threads: ``intra_op_threads`` (0: the machine's cores) over the workers,
    at least 1."""
    return max(1, (config.intra_op_threads or os.cpu_count() or 1) // config.workers)


def reserve(host: str, port: int) -> tuple[socket.socket | None, int]:
    """Port 0: a free port, held by a socket that lets the workers bind it too (SO_REUSEPORT) and takes no
    connections (it never listens). Any other port: as is."""
    if port:
        return None, port
    held = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind((host.strip("[]"), 0))
    return held, held.getsockname()[1]


class Prefix(logging.Filter):
    """Every line of a worker's log starts with ``worker <index>: ``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = f"worker {index}: "

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.prefix + str(record.msg)
        return True


def work(config: Config, index: int, ready: Connection) -> None:
    """A worker process: the whole server, which sends its model names on ``ready`` once SERVING."""
    logs.configure(config.log_level, config.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(Prefix(index))
    asyncio.run(serve(config, ready.send))


@dataclass
class Worker:
    index: int
    process: BaseProcess
    ready: Connection | None  # None once it reported, or ended without
    serving: bool = False


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = False  # SIGTERM or SIGINT came, or a worker ended on its own
        self.failed = False
        self.workers: list[Worker] = []

    def signal(self, signum: int, _: FrameType | None) -> None:
        log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stop()

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            for worker in self.workers:
                if worker.process.is_alive():
                    os.kill(worker.process.pid, signal.SIGTERM)

    def start(self, port: int) -> None:
        config = replace(self.config, port=port, metrics_port=-1, intra_op_threads=threads(self.config))
        context = multiprocessing.get_context("spawn")
        for index in range(self.config.workers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=work, args=(config, index, send), name=f"seqserve-worker-{index}")
            process.start()
            send.close()
            log.info("started worker %d (pid %d)", index, process.pid)
            self.workers.append(Worker(index, process, receive))
        if self.stopping:  # a signal came while they started
            self.stopping = False
            self.stop()

    def run(self, started: float, port: int, metrics_port: int | None) -> None:
        """Until every worker has ended: report SERVING once all are, and stop them all when one ends on its own."""
        running = {worker.process.sentinel: worker for worker in self.workers}
        while running:
            waiting = {worker.ready: worker for worker in self.workers if worker.ready is not None}
            for ready in wait([*waiting, *running], POLL_S):
                if ready in waiting:
                    self.report(waiting[ready], started, port, metrics_port)
                else:
                    self.ended(running.pop(ready))

    def report(self, worker: Worker, started: float, port: int, metrics_port: int | None) -> None:
        try:
            models = worker.ready.recv()
        except EOFError:  # it ended before SERVING: its sentinel says so
            worker.ready = None
            return
        worker.ready, worker.serving = None, True
        if all(w.serving for w in self.workers):
            c = self.config
            log.info("serving %s on %s:%d (%s), metrics on %s:%s, in %d workers", models, c.host, port,
                     "TLS" if c.tls_cert else "plaintext", c.metrics_host, metrics_port, c.workers)
            log.info("SERVING: %d workers configured, loaded and warmed up in %.1f s", c.workers,
                     time.perf_counter() - started)

    def ended(self, worker: Worker) -> None:
        worker.process.join()
        multiprocess.mark_process_dead(worker.process.pid)  # its live gauges leave the sums
        code = worker.process.exitcode
        if not self.stopping:
            log.error("worker %d (pid %d) ended on its own with exit code %s: stopping the others",
                      worker.index, worker.process.pid, code)
            self.failed = True
            self.stop()
        elif code != 0:
            log.error("worker %d (pid %d) stopped with exit code %s", worker.index, worker.process.pid, code)
            self.failed = True


def supervise(config: Config) -> int:
    """Run ``config.workers`` workers until SIGTERM or SIGINT; the exit code (0: every worker stopped cleanly)."""
    started = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="seqserve-metrics-")
    # The workers inherit it, and their prometheus_client reads it on import: multiprocess mode. This process only
    # reads their files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    supervisor = Supervisor(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.signal)
    held, http = None, None
    try:
        held, port = reserve(config.host, config.port)
        if config.metrics_port >= 0:
            http = metrics.serve(metrics.aggregate(), config.metrics_host, config.metrics_port, config)
        supervisor.start(port)
        supervisor.run(started, port, http.server_port if http else None)
    finally:
        supervisor.stop()
        for worker in supervisor.workers:
            worker.process.join()
        metrics.close(http)
        if held is not None:
            held.close()
        shutil.rmtree(folder, ignore_errors=True)
    log.info("stopped")
    return 1 if supervisor.failed else 0
