"""``seqserve.v1.Forecast``: ``Forecast`` (one history) and ``Observe`` (observations as they arrive)."""

from __future__ import annotations

from protos.seqserve.v1 import forecast_pb2 as pb
from protos.seqserve.v1 import forecast_pb2_grpc
from server.config import Config
from server.metrics import Metrics
from server.repository import Repository
from server.rpc import Call, resolve, rpc
from server.tasks.forecast import ForecastStep


def step_message(step: ForecastStep) -> pb.ForecastStep:
    return pb.ForecastStep(step=step.step, month=step.month, point=step.point, quantile_levels=step.quantile_levels,
                           quantiles=step.quantiles)


class ForecastService(forecast_pb2_grpc.ForecastServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics

    @rpc("Forecast")
    async def Forecast(self, request: pb.ForecastRequest, context, call: Call) -> None:
        task = call.use(resolve(self.repository, request.model, "forecast")).task
        task.check(list(request.history), "history", request.horizon, request.start_month)
        levels = task.levels(list(request.quantiles), "quantiles")
        with task.series(list(request.history), request.start_month) as series:
            call.stream_opened()
            await series.observe([])
            async for step in series.forecast(request.horizon, levels):
                await call.write(step_message(step))

    @rpc("Observe")
    async def Observe(self, requests, context, call: Call) -> None:
        first = await call.read()
        if first is None:
            return
        task = call.use(resolve(self.repository, first.model, "forecast")).task
        task.check(list(first.values), "values", first.horizon or 1, first.start_month)
        levels = task.levels(list(first.quantiles), "quantiles")
        with task.series(list(first.values), first.start_month) as series:
            call.stream_opened()
            message, new = first, []
            while message is not None:
                await series.observe(new)
                steps = [step_message(s) async for s in series.forecast(message.horizon or 1, levels)]
                await call.write(pb.ForecastUpdate(observed=series.observed, steps=steps), len(steps))
                message = await call.read()
                if message is not None:
                    task.check_more(list(message.values), message.horizon)
                    new = list(message.values)
