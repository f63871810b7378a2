"""Forecast RPCs over a ``step`` graph: ``(value [B,1], features [B,F], state) -> (quantiles [B,Q], state)``.

The preprocessing repeats ``training/forecast_data.py`` with numpy. From the manifest's
``preprocessing`` (keys at the top level or under ``scaling``): ``context`` and ``eps`` of the
scaling rule ``scale = mean(|last context values|) + eps``, ``season`` (12), ``lags`` and the
quantile ``quantiles`` levels. The step for target month ``t`` reads ``y[t-1] / scale`` and the
features: one-hot month of ``t`` then ``y[t-lag] / scale`` per lag. A history is read
teacher-forced (its last ``context`` values plus the lag prefix); past it, each forecast median
is fed back as the next value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from server.config import Config
from server.engine import ModelRunner
from server.gen.seqserve.v1 import forecast_pb2 as pb
from server.gen.seqserve.v1 import forecast_pb2_grpc
from server.metrics import Metrics
from server.repository import ManifestError, Model
from server.rpc import Call, Runners, check_count, check_finite, invalid, read, resolve, rpc

VALUE, FEATURES, QUANTILES = "value", "features", "quantiles"  # the step graph's task inputs and output


@dataclass(frozen=True)
class ForecastSpec:
    context: int
    eps: float
    season: int
    lags: tuple[int, ...]
    levels: tuple[float, ...]

    @classmethod
    def from_model(cls, model: Model) -> ForecastSpec:
        pre = model.manifest.get("preprocessing", {})
        scaling = pre["scaling"] if isinstance(pre.get("scaling"), dict) else pre
        try:
            spec = cls(int(scaling["context"]), float(scaling["eps"]), int(pre.get("season", 12)),
                       tuple(pre.get("lags", ())), tuple(float(q) for q in pre["quantiles"]))
        except KeyError as error:
            raise ManifestError(f"{model.path}/manifest.json: preprocessing.{error.args[0]} is missing") from None
        step = model.manifest["graphs"]["step"]
        names = {t["name"] for t in step["inputs"] + step["outputs"]}
        if missing := {VALUE, FEATURES, QUANTILES} - names:
            raise ManifestError(f"{model.path}/manifest.json: graphs.step lacks {sorted(missing)}")
        return spec

    @property
    def prefix(self) -> int:
        """Values before the first step's target, so that its lags exist."""
        return max(max(self.lags, default=1) - 1, 0)

    def select(self, requested: list[float], field: str) -> list[int]:
        """Indices of the requested levels (all when none); INVALID_ARGUMENT names an unknown one."""
        indices = []
        for i, level in enumerate(requested):
            match = [j for j, known in enumerate(self.levels) if abs(known - level) < 1e-9]
            if not match:
                raise invalid(f"{field}[{i}] = {level} is not a quantile of this model {list(self.levels)}")
            indices.append(match[0])
        return indices or list(range(len(self.levels)))


class Series:
    """One stream: its scaled values (observed, then fed-back medians), scale, calendar and state slot."""

    def __init__(self, runner: ModelRunner, spec: ForecastSpec, slots: np.ndarray, history: list[float],
                 start_month: int) -> None:
        self.runner, self.spec, self.slots = runner, spec, slots
        window = history[-(spec.context + spec.prefix):]
        self.scale = float(np.mean(np.abs(history[-spec.context:]))) + spec.eps
        self.month0 = start_month + len(history) - len(window)  # month (0 = January) of values[0]
        self.values = [v / self.scale for v in window]
        self.next_target = spec.prefix + 1
        self.observed = len(history)

    async def _step(self, target: int, values: list[float]) -> np.ndarray:
        month = np.eye(self.spec.season, dtype=np.float32)[(self.month0 + target) % self.spec.season]
        lagged = np.array([values[target - lag] for lag in self.spec.lags], dtype=np.float32)
        inputs = {VALUE: np.array([[values[target - 1]]], dtype=np.float32),
                  FEATURES: np.concatenate([month, lagged])[None]}
        return (await self.runner.run("step", inputs, self.slots))[QUANTILES][0]

    async def observe(self, values: list[float]) -> None:
        """Append observations and read them teacher-forced."""
        self.values.extend(v / self.scale for v in values)
        self.observed += len(values)
        for target in range(self.next_target, len(self.values)):
            await self._step(target, self.values)
        self.next_target = max(self.next_target, len(self.values))

    async def forecast(self, horizon: int, levels: list[int]) -> AsyncIterator[pb.ForecastStep]:
        """``horizon`` steps past the last observation; the stream's state is left as it was."""
        saved = self.runner.pools["step"].snapshot(self.slots)
        values = list(self.values)
        median = self.spec.levels.index(0.5) if 0.5 in self.spec.levels else len(self.spec.levels) // 2
        try:
            for ahead, target in enumerate(range(len(values), len(values) + horizon), start=1):
                quantiles = (await self._step(target, values)).astype(np.float64)
                values.append(float(quantiles[median]))
                yield pb.ForecastStep(step=ahead, month=(self.month0 + target) % self.spec.season + 1,
                                      point=quantiles[median] * self.scale,
                                      quantile_levels=[self.spec.levels[i] for i in levels],
                                      quantiles=(quantiles[levels] * self.scale).tolist())
        finally:
            self.runner.pools["step"].restore(self.slots, saved)


class ForecastService(forecast_pb2_grpc.ForecastServicer):
    def __init__(self, runners: Runners, config: Config, metrics: Metrics) -> None:
        self.runners, self.config, self.metrics = runners, config, metrics
        self.specs = {id(r): ForecastSpec.from_model(r.model)
                      for versions in runners.values() for r in versions.values() if r.model.task == "forecast"}

    def _check(self, spec: ForecastSpec, values: list[float], field: str, horizon: int, start_month: int) -> None:
        check_count(f"{field} (its length)", len(values), spec.prefix + 1, self.config.max_history)
        check_finite(field, values)
        check_count("horizon", horizon, 1, self.config.max_horizon)
        check_count("start_month", start_month or 1, 1, 12)

    @rpc("Forecast")
    async def Forecast(self, request: pb.ForecastRequest, context, call: Call) -> None:
        runner = call.use(resolve(self.runners, request.model, "forecast"))
        spec = self.specs[id(runner)]
        self._check(spec, list(request.history), "history", request.horizon, request.start_month)
        levels = spec.select(list(request.quantiles), "quantiles")
        with runner.open("step") as slots:
            call.stream_opened()
            series = Series(runner, spec, slots, list(request.history), max(request.start_month - 1, 0))
            await series.observe([])
            async for step in series.forecast(request.horizon, levels):
                await context.write(step)
                call.emitted()

    @rpc("Observe")
    async def Observe(self, requests, context, call: Call) -> None:
        first = await read(context, call, self.config.idle_timeout_s)
        if first is None:
            return
        runner = call.use(resolve(self.runners, first.model, "forecast"))
        spec = self.specs[id(runner)]
        self._check(spec, list(first.values), "values", first.horizon or 1, first.start_month)
        levels = spec.select(list(first.quantiles), "quantiles")
        with runner.open("step") as slots:
            call.stream_opened()
            series = Series(runner, spec, slots, list(first.values), max(first.start_month - 1, 0))
            message, new = first, []
            while message is not None:
                await series.observe(new)
                steps = [s async for s in series.forecast(message.horizon or 1, levels)]
                await context.write(pb.ForecastUpdate(observed=series.observed, steps=steps))
                call.emitted()
                message = await read(context, call, self.config.idle_timeout_s)
                if message is not None:
                    self._check_more(message)
                    new = list(message.values)

    def _check_more(self, message: pb.Observation) -> None:
        check_count("values (their length)", len(message.values), 0, self.config.max_history)
        check_finite("values", message.values)
        check_count("horizon", message.horizon or 1, 1, self.config.max_horizon)
