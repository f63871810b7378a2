"""The server: load and warm up the repository, serve gRPC and ``/metrics``, stop gracefully."""

from __future__ import annotations

import asyncio
import logging

import grpc

from server.catalog import HealthService, ModelsService, ReflectionService
from server.config import Config
from server.engine import ModelRunner, load_runners
from server.forecast import ForecastService
from grpc_health.v1 import health_pb2, health_pb2_grpc
from protos.seqserve.v1 import forecast_pb2_grpc, models_pb2_grpc, sentiment_pb2_grpc, translate_pb2_grpc
from server.metrics import Metrics
from server.sentiment import SentimentService
from server.translation import TranslationService

log = logging.getLogger(__name__)

SERVICES = [  # (servicer class, generated registration function, full service name)
    (SentimentService, sentiment_pb2_grpc.add_SentimentServicer_to_server, "seqserve.v1.Sentiment"),
    (ForecastService, forecast_pb2_grpc.add_ForecastServicer_to_server, "seqserve.v1.Forecast"),
    (TranslationService, translate_pb2_grpc.add_TranslationServicer_to_server, "seqserve.v1.Translation"),
    (ModelsService, models_pb2_grpc.add_ModelsServicer_to_server, "seqserve.v1.Models"),
]
HEALTH = "grpc.health.v1.Health"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.runners = load_runners(config, self.metrics)
        names = [name for *_, name in SERVICES]
        self.health = HealthService(names)
        self.grpc = grpc.aio.server()
        for servicer, register, _ in SERVICES:
            register(servicer(self.runners, config, self.metrics), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.grpc.add_generic_rpc_handlers(ReflectionService([*names, HEALTH]).handlers())
        self.port = self.grpc.add_insecure_port(f"{config.host}:{config.port}")
        self.metrics_port: int | None = None

    @property
    def all_runners(self) -> list[ModelRunner]:
        return [runner for versions in self.runners.values() for runner in versions.values()]

    async def start(self) -> None:
        """Listen at once (health says NOT_SERVING), warm every model up, then report SERVING."""
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.metrics_port)
        await self.grpc.start()
        for runner in self.all_runners:
            runner.start()
            await asyncio.to_thread(runner.warm_up)
        await self.health.set(SERVING)
        log.info("serving %s on %s:%d, metrics on :%s", sorted(self.runners), self.config.host, self.port,
                 self.metrics_port)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, give open streams ``grace`` seconds, then cancel what is left."""
        await self.health.set(NOT_SERVING)
        await self.grpc.stop(self.config.grace_s if grace is None else grace)
        await asyncio.gather(*(runner.stop() for runner in self.all_runners))
        self.metrics.close()
