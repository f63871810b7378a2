"""Forecast RPCs over a ``step`` graph: ``(value [B,1], features [B,F], state) -> (quantiles [B,Q], state)``.

The preprocessing repeats ``training/forecast_data.py`` with numpy, from the manifest's
``preprocessing`` block (``docs/forecast.md``, Export and serving):

* ``scaling``: ``scale = mean(|y|)`` over the last ``min(context, n - prefix)`` observations
  plus ``eps``, where ``prefix = max(lags) - 1``; the model reads ``z = log(max(y / scale,
  floor))`` (``transform: log``) or ``y / scale`` (``identity``), and a quantile ``q`` means
  ``scale * exp(q)`` (or ``scale * q``).
* The step for target month ``t`` reads ``value = z[t-1]`` and ``features`` = one-hot month
  of ``t`` (``season`` columns, January first) then ``z[t-lag]`` per lag.
* A history (at least ``min_history`` values) is read teacher-forced over its last ``prefix +
  min(context, n - prefix)`` values; past it, each forecast median is fed back as ``z``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.config import Config
from server.engine import ModelRunner
from protos.seqserve.v1 import forecast_pb2 as pb
from protos.seqserve.v1 import forecast_pb2_grpc
from server.metrics import Metrics
from server.repository import ManifestError, Model
from server.rpc import Call, Runners, check_count, check_finite, invalid, read, resolve, rpc

VALUE, FEATURES, QUANTILES = "value", "features", "quantiles"  # the step graph's task inputs and output
TRANSFORMS = ("log", "identity")


@dataclass(frozen=True)
class ForecastSpec:
    context: int
    eps: float
    transform: str
    floor: float
    season: int
    lags: tuple[int, ...]
    levels: tuple[float, ...]
    min_history: int

    @classmethod
    def from_model(cls, model: Model) -> ForecastSpec:
        where = f"{model.path}/manifest.json: preprocessing"
        pre = model.manifest.get("preprocessing", {})

        def get(dotted: str) -> Any:
            value = pre
            for key in dotted.split("."):
                if not isinstance(value, dict) or key not in value:
                    raise ManifestError(f"{where}.{dotted} is missing")
                value = value[key]
            return value

        spec = cls(int(get("scaling.context")), float(get("scaling.eps")), get("scaling.transform"),
                   float(get("scaling.floor")), int(get("season")), tuple(int(lag) for lag in get("lags")),
                   tuple(float(q) for q in get("quantiles")), int(get("min_history")))
        if spec.transform not in TRANSFORMS:
            raise ManifestError(f"{where}.scaling.transform is {spec.transform!r}, expected one of {TRANSFORMS}")
        if 0.5 not in spec.levels:
            raise ManifestError(f"{where}.quantiles {list(spec.levels)} lacks the median 0.5 that is fed back")
        if spec.min_history < spec.prefix + 1:
            raise ManifestError(f"{where}.min_history is {spec.min_history}, the lags need {spec.prefix + 1}")
        step = model.manifest["graphs"]["step"]
        tensors = {t["name"]: t["shape"] for t in step["inputs"] + step["outputs"]}
        if missing := {VALUE, FEATURES, QUANTILES} - set(tensors):
            raise ManifestError(f"{model.path}/manifest.json: graphs.step lacks {sorted(missing)}")
        if tensors[FEATURES][1:] != [spec.season + len(spec.lags)]:
            raise ManifestError(f"{model.path}/manifest.json: graphs.step input features is {tensors[FEATURES]}, "
                                f"season and lags make {spec.season + len(spec.lags)} columns")
        return spec

    @property
    def prefix(self) -> int:
        """Values before the first step's target, so that its lags exist."""
        return max(max(self.lags, default=1) - 1, 0)

    @property
    def median(self) -> int:
        return self.levels.index(0.5)

    def encode(self, values: Iterable[float], scale: float) -> list[float]:
        ratio = np.asarray(list(values), dtype=np.float64) / scale
        return (np.log(np.maximum(ratio, self.floor)) if self.transform == "log" else ratio).tolist()

    def decode(self, quantiles: np.ndarray, scale: float) -> np.ndarray:
        return scale * (np.exp(quantiles) if self.transform == "log" else quantiles)

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
    """One stream: its values in model units (observed, then fed-back medians), scale, calendar and state slot."""

    def __init__(self, runner: ModelRunner, spec: ForecastSpec, slots: np.ndarray, history: list[float],
                 start_month: int) -> None:
        self.runner, self.spec, self.slots = runner, spec, slots
        usable = min(spec.context, len(history) - spec.prefix)
        window = history[-(spec.prefix + usable):]
        self.scale = float(np.mean(np.abs(window[spec.prefix:]))) + spec.eps
        self.month0 = start_month + len(history) - len(window)  # month (0 = January) of values[0]
        self.values = spec.encode(window, self.scale)
        self.next_target = spec.prefix + 1
        self.observed = len(history)

    async def _step(self, target: int, values: list[float]) -> np.ndarray:
        month = np.eye(self.spec.season, dtype=np.float32)[(self.month0 + target) % self.spec.season]
        lagged = np.array([values[target - lag] for lag in self.spec.lags], dtype=np.float32)
        inputs = {VALUE: np.array([[values[target - 1]]], dtype=np.float32),
                  FEATURES: np.concatenate([month, lagged])[None]}
        return (await self.runner.run("step", inputs, self.slots))[QUANTILES][0]

    async def observe(self, values: list[float]) -> None:
        """Append observations (scaled with the stream's fixed scale) and read them teacher-forced."""
        self.values.extend(self.spec.encode(values, self.scale))
        self.observed += len(values)
        for target in range(self.next_target, len(self.values)):
            await self._step(target, self.values)
        self.next_target = max(self.next_target, len(self.values))

    async def forecast(self, horizon: int, levels: list[int]) -> AsyncIterator[pb.ForecastStep]:
        """``horizon`` steps past the last observation; the stream's state is left as it was."""
        saved = self.runner.pools["step"].snapshot(self.slots)
        values = list(self.values)
        try:
            for ahead, target in enumerate(range(len(values), len(values) + horizon), start=1):
                quantiles = (await self._step(target, values)).astype(np.float64)
                values.append(float(quantiles[self.spec.median]))
                decoded = self.spec.decode(quantiles, self.scale)
                yield pb.ForecastStep(step=ahead, month=(self.month0 + target) % self.spec.season + 1,
                                      point=decoded[self.spec.median],
                                      quantile_levels=[self.spec.levels[i] for i in levels],
                                      quantiles=decoded[levels].tolist())
        finally:
            self.runner.pools["step"].restore(self.slots, saved)


class ForecastService(forecast_pb2_grpc.ForecastServicer):
    def __init__(self, runners: Runners, config: Config, metrics: Metrics) -> None:
        self.runners, self.config, self.metrics = runners, config, metrics
        self.specs = {id(r): ForecastSpec.from_model(r.model)
                      for versions in runners.values() for r in versions.values() if r.model.task == "forecast"}

    def _check(self, spec: ForecastSpec, values: list[float], field: str, horizon: int, start_month: int) -> None:
        check_count(f"{field} (its length)", len(values), spec.min_history, self.config.max_history)
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
