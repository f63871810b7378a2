"""``seqserve.v1.Forecast``: ``Forecast`` (one history) and ``Observe`` (observations as they arrive)."""

from __future__ import annotations

from protos.seqserve.v1 import forecast_pb2 as pb
from protos.seqserve.v1 import forecast_pb2_grpc
from server.config import Config
from server.metrics import Metrics
from server.repository import Repository
from server.resume import ResumeTokens, same_model
from server.rpc import Call, resolve, rpc
from server.tasks.forecast import ForecastStep


def step_message(step: ForecastStep) -> pb.ForecastStep:
    return pb.ForecastStep(step=step.step, month=step.month, point=step.point, quantile_levels=step.quantile_levels,
                           quantiles=step.quantiles)


class ForecastService(forecast_pb2_grpc.ForecastServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics
        self.resume = ResumeTokens(config)

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
        """One update per message; resume tokens when asked for and when the server ends the stream."""
        first = await call.read()
        if first is None:
            return
        if first.resume_token:
            served, resumed = self.resume.open(first.resume_token, self.repository, "forecast")
            same_model(first.model.name, served)
            task = call.use(served).task
            task.check_more(list(first.values), first.horizon)
            opened, new = task.resumed_series(), list(first.values)
        else:
            served, resumed = call.use(resolve(self.repository, first.model, "forecast")), None
            task = served.task
            task.check(list(first.values), "values", first.horizon or 1, first.start_month)
            opened, new = task.series(list(first.values), first.start_month), []
        levels = task.levels(list(first.quantiles), "quantiles")
        with opened as series:
            if resumed is not None:
                self.resume.thaw(series, resumed)
            call.stream_opened()

            async def send_token() -> None:
                await call.write(pb.ForecastUpdate(observed=series.observed,
                                                   resume_token=self.resume.freeze(served.model, series, "forecast")),
                                 0)

            if self.resume.enabled:
                call.resumable(send_token)
            message = first
            while message is not None:
                await series.observe(new)
                steps = [step_message(s) async for s in series.forecast(message.horizon or 1, levels)]
                token = b""
                if message.want_resume_token:
                    self.resume.require("want_resume_token")
                    token = self.resume.freeze(served.model, series, "forecast")
                await call.write(pb.ForecastUpdate(observed=series.observed, steps=steps, resume_token=token),
                                 len(steps))
                message = await call.read()
                if message is not None:
                    task.check_more(list(message.values), message.horizon)
                    new = list(message.values)
