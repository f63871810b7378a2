"""The server: load and warm up the repository, serve gRPC and ``/metrics``, stop gracefully.

``seqserve.v1`` and ``inference.GRPCInferenceService`` (KServe v2 / Triton) share the port. Health
(``grpc.health.v1``) and reflection (``grpc.reflection.v1alpha``, unless turned off, for the protobuf
default pool: the ``seqserve.v1`` services) come from the grpcio-health-checking and grpcio-reflection
packages. Every call passes the interceptor (``server/interceptor.py``: tokens, undecodable requests,
tracking for the shutdown sequence).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.inference import kserve_pb2_grpc
from protos.seqserve.v1 import (
    forecast_pb2,
    forecast_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    sentiment_pb2,
    sentiment_pb2_grpc,
    translate_pb2,
    translate_pb2_grpc,
)
from server import logs, repository
from server.config import Config
from server.interceptor import Interceptor
from server.metrics import REFRESH_S, Metrics
from server.reload import Reloader
from server.rpc import SHUTDOWN, Calls
from server.security import Tokens, server_credentials
from server.services.forecast import ForecastService
from server.services.kserve.service import KServeService
from server.services.models import ModelsService
from server.services.sentiment import SentimentService
from server.services.translation import TranslationService

log = logging.getLogger(__name__)
lifecycle = logging.getLogger("server")  # what python -m server logs of its own start and stop

SERVICES = [  # (servicer class, generated registration function, full service name)
    (SentimentService, sentiment_pb2_grpc.add_SentimentServicer_to_server,
     sentiment_pb2.DESCRIPTOR.services_by_name["Sentiment"].full_name),
    (ForecastService, forecast_pb2_grpc.add_ForecastServicer_to_server,
     forecast_pb2.DESCRIPTOR.services_by_name["Forecast"].full_name),
    (TranslationService, translate_pb2_grpc.add_TranslationServicer_to_server,
     translate_pb2.DESCRIPTOR.services_by_name["Translation"].full_name),
    (ModelsService, models_pb2_grpc.add_ModelsServicer_to_server,
     models_pb2.DESCRIPTOR.services_by_name["Models"].full_name),
]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
FREEZE_S = 1.0  # after the grace period, how long resumable streams get to send their resume token
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        credentials = server_credentials(config)  # the files that are quick to check, before the models
        self.tokens = Tokens.from_config(config)
        self.metrics = Metrics()
        self.models = repository.load(config, self.metrics)
        self.reloader = Reloader(self.models, config, self.metrics)
        self.calls = Calls(config)
        options = [("grpc.max_receive_message_length", config.max_message_bytes)]
        if config.workers > 1:  # a worker shares the port with the others: SO_REUSEPORT spreads connections among them
            options.append(("grpc.so_reuseport", 1))
        self.grpc = grpc.aio.server(interceptors=[Interceptor(self.calls, self.tokens, self.metrics)], options=options)
        extra = {ModelsService: {"reloader": self.reloader}}
        for servicer, register, _ in SERVICES:
            register(servicer(self.models, config, self.metrics, **extra.get(servicer, {})), self.grpc)
        self.kserve = KServeService(self.models, config, self.metrics, self.reloader)
        self.reloader.listeners.append(self.kserve)
        kserve_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.kserve, self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if config.reflection:
            reflection.enable_server_reflection([*(name for *_, name in SERVICES), HEALTH, reflection.SERVICE_NAME],
                                                self.grpc)
        address = f"{config.host}:{config.port}"
        self.port = (self.grpc.add_secure_port(address, credentials) if credentials
                     else self.grpc.add_insecure_port(address))
        if self.tokens.required and not credentials:
            log.warning("bearer tokens without TLS: anyone on the network path can read them")
        self.metrics_port: int | None = None
        self.refreshing: asyncio.Task | None = None

    @property
    def served(self) -> list[repository.Served]:
        return [served for versions in self.models.values() for served in versions.values()]

    async def set_health(self, status: int) -> None:
        """The whole server's status, and each service's (``""`` is the server)."""
        for name in ["", *(name for *_, name in SERVICES)]:
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listen at once (health says NOT_SERVING), warm every model up, then report SERVING. A worker (workers > 1)
        listens only once warmed up: a connection the port hands it must not wait for that."""
        worker = self.config.workers > 1
        await self.set_health(NOT_SERVING)
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port, self.config)
        if not worker:
            await self.grpc.start()
        for served in self.served:
            served.start()
            await asyncio.to_thread(served.warm_up)
        # What start-up made (modules, protobuf descriptors, the models' Python objects) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it over and over (bench/RESULTS.md).
        gc.freeze()
        await self.set_health(SERVING)
        self.kserve.ready = True
        self.reloader.start()
        transport = "TLS" if self.config.tls_cert else "plaintext"
        if worker:
            await self.grpc.start()
            self.refreshing = asyncio.create_task(self.refresh_metrics())
            log.info("serving %s on %s:%d (%s) with the other workers", sorted(self.models), self.config.host,
                     self.port, transport)
        else:
            log.info("serving %s on %s:%d (%s), metrics on %s:%s", sorted(self.models), self.config.host, self.port,
                     transport, self.config.metrics_host, self.metrics_port)

    async def refresh_metrics(self) -> None:
        """A worker's gauges that are read when scraped, written for the supervisor's /metrics every REFRESH_S."""
        while True:
            self.metrics.refresh()
            await asyncio.sleep(REFRESH_S)

    async def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """The shutdown sequence (docs/server.md, Lifecycle): health turns NOT_SERVING and the server keeps serving
        for ``drain`` seconds, so that load balancers and probes see it; then new calls are refused and health
        watches ended; open calls get ``grace`` seconds, after which each still open gets UNAVAILABLE "the server is
        shutting down" (a resumable stream after its resume token, within ``FREEZE_S``); then the engine stops."""
        grace = self.config.grace_s if grace is None else grace
        drain = self.config.drain_s if drain is None else drain
        await self.health.enter_graceful_shutdown()
        self.kserve.ready = False
        log.info("NOT_SERVING: draining for %g s, then open calls have %g s to finish", drain, grace)
        await asyncio.sleep(drain)
        # grpc's own deadline comes after ours: it would end the calls still open with INTERNAL.
        stopped = asyncio.ensure_future(self.grpc.stop(grace + FREEZE_S + 1))
        self.calls.end(SHUTDOWN, health=True)
        if not await self.calls.settle(grace):
            log.info("grace period over: ending %d open calls", len(self.calls.live))
            self.calls.end(SHUTDOWN, health=False)  # resumable streams send their resume token first
            if not await self.calls.settle(FREEZE_S):
                log.warning("%d calls still open %g s later: ended without a resume token", len(self.calls.live),
                            FREEZE_S)
                self.calls.end(SHUTDOWN, health=False, force=True)
        await stopped
        self.kserve.close()
        await self.reloader.stop()
        await asyncio.gather(*(served.stop() for served in self.served))
        if self.refreshing is not None:
            self.refreshing.cancel()
            self.metrics.refresh()  # the slots and queues are empty now: the supervisor's page says so
        self.metrics.close()


async def serve(config: Config, ready: Callable[[list[str]], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully; ``ready`` gets the model names once SERVING."""
    started = time.perf_counter()
    try:
        server = Server(config)
    except (ValueError, OSError) as error:  # a wrong repository or certificate: one line, no traceback
        sys.exit(f"python -m server: {error}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    for line in logs.summary(config, server.served):
        lifecycle.info(line)
    lifecycle.info("SERVING: configured, loaded and warmed up in %.1f s", time.perf_counter() - started)
    if ready is not None:
        ready(sorted(server.models))
    await stop.wait()
    await server.stop()
    lifecycle.info("stopped")
