"""``Models`` (what is loaded), ``grpc.health.v1.Health`` and server reflection (v1 and v1alpha)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool

from server.config import Config
from server.engine import ModelRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server.gen.grpc.reflection.v1 import reflection_pb2 as rpb
from protos.seqserve.v1 import models_pb2, models_pb2_grpc
from server.metrics import Metrics
from server.rpc import Call, Runners, lookup, rpc

Status = health_pb2.HealthCheckResponse.ServingStatus


def model_info(runner: ModelRunner) -> models_pb2.ModelInfo:
    m = runner.model.manifest

    def as_json(key: str) -> str:
        return json.dumps(m.get(key, {}), sort_keys=True)

    return models_pb2.ModelInfo(
        name=runner.model.name, version=runner.model.version, task=m["task"], description=m.get("description", ""),
        graphs=sorted(m["graphs"]), model_json=as_json("model"), metrics_json=as_json("metrics"),
        preprocessing_json=as_json("preprocessing"), provenance_json=as_json("provenance"),
    )


class ModelsService(models_pb2_grpc.ModelsServicer):
    def __init__(self, runners: Runners, config: Config, metrics: Metrics) -> None:
        self.runners, self.metrics = runners, metrics

    @rpc("ListModels")
    async def ListModels(self, request, context, call: Call) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(models=[model_info(self.runners[name][version])
                                                     for name in sorted(self.runners)
                                                     for version in sorted(self.runners[name])])

    @rpc("GetModel")
    async def GetModel(self, request, context, call: Call) -> models_pb2.ModelInfo:
        runner = lookup(self.runners, request.name, request.version, field="")
        call.model = request.name
        return model_info(runner)


class HealthService(health_pb2_grpc.HealthServicer):
    """One status for the whole server and each of its services: NOT_SERVING until warmed up and on shutdown."""

    def __init__(self, services: list[str]) -> None:
        self.services = {"", *services}
        self.status = Status.NOT_SERVING
        self.changed = asyncio.Condition()

    async def set(self, status: int) -> None:
        async with self.changed:
            self.status = status
            self.changed.notify_all()

    def _status(self, service: str) -> int:
        return self.status if service in self.services else Status.SERVICE_UNKNOWN

    async def Check(self, request, context) -> health_pb2.HealthCheckResponse:
        if request.service not in self.services:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"service {request.service!r} is unknown")
        return health_pb2.HealthCheckResponse(status=self.status)

    async def Watch(self, request, context) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda last=last: self._status(request.service) != last)
                last = self._status(request.service)
            yield health_pb2.HealthCheckResponse(status=last)


class ReflectionService:
    """Server reflection from the process's descriptor pool, for grpcurl and similar tools."""

    NAMES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")

    def __init__(self, services: list[str]) -> None:
        self.services = sorted([*services, *self.NAMES])
        self.pool = descriptor_pool.Default()

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """v1alpha's messages are v1's under another package name, so one implementation serves both."""
        method = grpc.stream_stream_rpc_method_handler(
            self.info, request_deserializer=rpb.ServerReflectionRequest.FromString,
            response_serializer=rpb.ServerReflectionResponse.SerializeToString)
        return [grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": method}) for name in self.NAMES]

    async def info(self, requests, context) -> AsyncIterator[rpb.ServerReflectionResponse]:
        async for request in requests:
            yield self._answer(request)

    def _answer(self, request: rpb.ServerReflectionRequest) -> rpb.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        response = rpb.ServerReflectionResponse(valid_host=request.host, original_request=request)
        try:
            if kind == "list_services":
                response.list_services_response.service.extend(rpb.ServiceResponse(name=n) for n in self.services)
            elif kind == "file_by_filename":
                self._files(response, self.pool.FindFileByName(request.file_by_filename))
            elif kind == "file_containing_symbol":
                self._files(response, self.pool.FindFileContainingSymbol(request.file_containing_symbol))
            else:
                response.error_response.error_code = grpc.StatusCode.UNIMPLEMENTED.value[0]
                response.error_response.error_message = f"{kind} is not supported"
        except KeyError as error:
            response.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
            response.error_response.error_message = str(error)
        return response

    @staticmethod
    def _files(response: rpb.ServerReflectionResponse, file) -> None:
        """The file and, transitively, what it imports (clients need the whole set to decode)."""
        seen, stack = set(), [file]
        while stack:
            current = stack.pop()
            if current.name in seen:
                continue
            seen.add(current.name)
            proto = descriptor_pb2.FileDescriptorProto()
            current.CopyToProto(proto)
            response.file_descriptor_response.file_descriptor_proto.append(proto.SerializeToString())
            stack.extend(current.dependencies)
