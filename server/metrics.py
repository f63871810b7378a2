"""Prometheus metrics, in a registry of their own (tests start several servers in one process).

Per-request metrics carry ``model``, ``method`` and ``protocol`` labels (``seqserve`` for ``seqserve.v1``,
``kserve`` for ``inference.GRPCInferenceService``: both protocols count in the same series); per-step
metrics (queue wait, batch size, step duration) belong to a graph and carry ``model`` and ``graph``. The
gauges of what a model version holds (stream slots, queued work) carry ``model``, ``version`` and ``graph``
and are read when scraped. The process and platform collectors add ``process_*`` and ``python_*``.

With ``workers`` > 1 (``server/workers.py``) prometheus-client's multiprocess mode is on: each worker writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor's ``/metrics`` adds them up
(``aggregate``). Counters and histograms add; gauges carry a ``multiprocess_mode`` (``livesum``: the whole
server's; ``livemax`` for ``seqserve_model_info``, 1 in every worker). The gauges read when scraped are
written by each worker every ``REFRESH_S`` instead (``refresh``): a scrape of the supervisor cannot call into a
worker. The per-process collectors (``process_*``, ``python_*``) are not aggregated and not shown there.
"""

from __future__ import annotations

from collections.abc import Callable
from http.server import HTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
    start_http_server,
)

from server.config import Config

FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REFRESH_S = 1.0  # multiprocess mode: how often a worker writes the gauges read when scraped


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http: HTTPServer | None = None
        self.sampled: list[tuple[Gauge, Callable[[], float]]] = []  # the gauges read when scraped
        request = ["model", "method", "protocol"]
        graph = ["model", "graph"]
        held = ["model", "version", "graph"]
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.model_info = Gauge("seqserve_model_info", "Loaded model versions (always 1): task and ONNX Runtime "
                                "provider", ["model", "version", "task", "provider"], registry=r,
                                multiprocess_mode="livemax")
        self.reloads = Counter("seqserve_reloads", "Hot reload of model versions, by outcome: loaded, refused "
                               "(invalid: see the log), retired (removed from disk, no new calls), unloaded (its "
                               "last call ended)", ["model", "outcome"], registry=r)
        self.requests = Counter("seqserve_requests", "Finished requests by gRPC status code",
                                [*request, "code"], registry=r)
        self.request_duration = Histogram("seqserve_request_duration_seconds", "Request duration",
                                          request, buckets=SLOW, registry=r)
        self.first_result = Histogram("seqserve_time_to_first_result_seconds",
                                      "From the request to its first token or result", request,
                                      buckets=SLOW, registry=r)
        self.inter_token = Histogram("seqserve_inter_token_latency_seconds",
                                     "Between consecutive tokens or results of one stream", request, buckets=FAST,
                                     registry=r)
        self.tokens = Counter("seqserve_tokens", "Tokens read or sent (sentiment and translation models)", request,
                              registry=r)
        self.forecast_steps = Counter("seqserve_forecast_steps", "Forecast steps sent (forecast models)", request,
                                      registry=r)
        self.active_streams = Gauge("seqserve_active_streams", "Streams holding state slots (a batch: one per text)",
                                    request, registry=r, multiprocess_mode="livesum")
        self.sessions_ended = Counter("seqserve_sessions_ended", "Streams ended, by reason (completed, cancelled, "
                                      "deadline, idle_timeout, write_timeout, max_age, shutdown, error)",
                                      [*request, "reason"], registry=r)
        self.queue_wait = Histogram("seqserve_queue_wait_seconds", "From a step's submission to its batch's start",
                                    graph, buckets=FAST, registry=r)
        self.batch_size = Histogram("seqserve_batch_size", "Rows per batched step", graph, buckets=BATCH, registry=r)
        self.step_duration = Histogram("seqserve_step_duration_seconds", "One batched ONNX Runtime run",
                                       graph, buckets=FAST, registry=r)
        self.slots = Gauge("seqserve_stream_slots", "State slots of a graph: the streams it can hold (max_streams)",
                           held, registry=r, multiprocess_mode="livesum")
        self.slots_in_use = Gauge("seqserve_stream_slots_in_use", "State slots held by open streams", held,
                                  registry=r, multiprocess_mode="livesum")
        self.queue_depth = Gauge("seqserve_queue_depth", "Steps or sequences waiting for a graph's next batch", held,
                                 registry=r, multiprocess_mode="livesum")

    def results_of(self, task: str) -> Counter:
        """What a call to a model of ``task`` sends is counted as: forecast steps, else tokens."""
        return self.forecast_steps if task == "forecast" else self.tokens

    def read_when_scraped(self, gauge: Gauge, value: Callable[[], float]) -> None:
        """``gauge`` (a labelled child) shows ``value()`` when scraped; in multiprocess mode, as of the last
        ``refresh``."""
        gauge.set_function(value)
        self.sampled.append((gauge, value))

    def forget(self, gauge: Gauge, *labels: str) -> None:
        """Remove a labelled series (its model version is unloaded). It is zeroed first: in multiprocess mode a worker's
        files keep the last value written, which the supervisor's page would go on showing."""
        child = gauge.labels(*labels)
        self.sampled = [(sampled, value) for sampled, value in self.sampled if sampled is not child]
        child.set(0)
        gauge.remove(*labels)

    def refresh(self) -> None:
        """Write the gauges read when scraped to this worker's files (multiprocess mode)."""
        for gauge, value in self.sampled:
            gauge.set(value())

    def serve(self, host: str, port: int, config: Config) -> int:
        """Serve ``/metrics`` on ``host``:``port`` (0: a free one); returns the port."""
        self.http = serve(self.registry, host, port, config)
        return self.http.server_port

    def close(self) -> None:
        close(self.http)


def aggregate() -> CollectorRegistry:
    """A registry of what every worker wrote to ``PROMETHEUS_MULTIPROC_DIR``, added up (multiprocess mode)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve(registry: CollectorRegistry, host: str, port: int, config: Config) -> HTTPServer:
    """``registry`` as ``/metrics`` on ``host``:``port`` (0: a free one), over TLS (and mTLS) as the gRPC port is."""
    tls = {"certfile": config.tls_cert, "keyfile": config.tls_key} if config.tls_cert else {}
    if config.tls_client_ca:
        tls |= {"client_cafile": config.tls_client_ca, "client_auth_required": True}
    http, _ = start_http_server(port, host, registry=registry, **tls)
    return http


def close(http: HTTPServer | None) -> None:
    if http is not None:
        http.shutdown()
        http.server_close()
