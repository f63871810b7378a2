"""``seqserve.v1.Models``: what is loaded, each model's manifest as people read it, and ``Reload`` (hot reload now)."""

from __future__ import annotations

import asyncio
import json

from protos.seqserve.v1 import models_pb2, models_pb2_grpc
from protos.seqserve.v1.common_pb2 import ModelRef
from server.config import Config
from server.metrics import Metrics
from server.reload import Reloader
from server.repository import Repository, Served
from server.rpc import Call, lookup, rpc


def model_info(served: Served) -> models_pb2.ModelInfo:
    model, raw = served.model, served.model.manifest.raw

    def as_json(key: str) -> str:
        return json.dumps(raw.get(key, {}), sort_keys=True)

    return models_pb2.ModelInfo(
        name=model.name, version=model.version, task=model.task or "", description=model.manifest.description,
        graphs=sorted(model.manifest.graphs), model_json=as_json("model"), metrics_json=as_json("metrics"),
        preprocessing_json=as_json("preprocessing"), provenance_json=as_json("provenance"),
    )


class ModelsService(models_pb2_grpc.ModelsServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics, reloader: Reloader) -> None:
        self.repository, self.config, self.metrics, self.reloader = repository, config, metrics, reloader

    @rpc("ListModels")
    async def ListModels(self, request, context, call: Call) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(models=[model_info(self.repository[name][version])
                                                     for name in sorted(self.repository)
                                                     for version in sorted(self.repository[name])])

    @rpc("GetModel")
    async def GetModel(self, request, context, call: Call) -> models_pb2.ModelInfo:
        return model_info(call.use(lookup(self.repository, request.name, request.version, field="")))

    @rpc("Reload")
    async def Reload(self, request, context, call: Call) -> models_pb2.ReloadResponse:
        # Shielded: a caller that goes away does not cancel a version half loaded.
        outcome = await asyncio.shield(self.reloader.reload())

        def refs(served: list[Served]) -> list[ModelRef]:
            return [ModelRef(name=s.model.name, version=s.model.version) for s in served]

        return models_pb2.ReloadResponse(
            loaded=refs(outcome.loaded), retired=refs(outcome.retired),
            refused=[models_pb2.Refusal(folder=str(folder), error=error) for folder, error in outcome.refused.items()])
