"""Forecasting over a ``step`` graph: ``(value [B,1], features [B,F], state) -> (quantiles [B,Q], state)``.

A ``Series`` holds one stream: its values in model units (observed, then fed-back medians), its
scale and calendar, and a state slot. The rules (scaling, step inputs) are ``contract/forecast.py``
with the manifest's ``preprocessing``: a history is read teacher-forced over its last ``prefix +
min(context, n - prefix)`` values; past it, each forecast median is fed back. When the manifest declares
version 3's rules (``combination``, ``calibration``), a stream also keeps its latest ``window`` observed values in
series units, and each forecast step's quantiles are adjusted by them (``contract.forecast.prepare``) before it is
sent; the fed-back medians stay the model's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract import forecast as rules
from contract.manifest import ForecastPreprocessing
from server.config import Config
from server.engine import ModelRunner
from server.errors import InputError, check_count
from server.graph import Arrays, Holding, Lease


@dataclass(frozen=True)
class ForecastStep:
    step: int  # 1 = the month after the last observation
    month: int  # 1 = January
    point: float  # the median
    quantile_levels: list[float]
    quantiles: list[float]


class ForecastTask:
    workers: tuple = ()

    def __init__(self, runner: ModelRunner, config: Config) -> None:
        self.runner, self.config = runner, config
        self.pre: ForecastPreprocessing = runner.model.manifest.preprocessing

    def check(self, values: list[float], field: str, horizon: int, start_month: int) -> None:
        """A first message: its history, horizon and start month."""
        check_count(f"{field} (its length)", len(values), self.pre.min_history, self.config.max_history)
        self._check_values(field, values)
        check_count("horizon", horizon, 1, self.config.max_horizon)
        check_count("start_month", start_month or 1, 1, 12)

    def check_more(self, values: list[float], horizon: int) -> None:
        """A later message of an ``Observe`` stream: more values and a horizon."""
        check_count("values (their length)", len(values), 0, self.config.max_history)
        self._check_values("values", values)
        check_count("horizon", horizon or 1, 1, self.config.max_horizon)

    def _check_values(self, field: str, values: list[float]) -> None:
        """Values the model can read (``contract.forecast.unreadable``)."""
        for index, value in enumerate(values):
            if problem := rules.unreadable(value, self.pre.scaling.transform):
                raise InputError(f"{field}[{index}] is {value}: {problem}")

    def levels(self, requested: list[float], field: str) -> list[int]:
        """Indices of the requested quantile levels (all when none); ``InputError`` names an unknown one."""
        indices = []
        for i, level in enumerate(requested):
            match = [j for j, known in enumerate(self.pre.quantiles) if abs(known - level) < 1e-9]
            if not match:
                raise InputError(f"{field}[{i}] = {level} is not a quantile of this model {list(self.pre.quantiles)}")
            indices.append(match[0])
        return indices or list(range(len(self.pre.quantiles)))

    def series(self, history: list[float], start_month: int) -> Series:
        """A stream from ``history`` (``start_month``: 1 = January, 0 = unknown), holding a state slot in its
        ``with`` block."""
        return Series(self, history, max(start_month - 1, 0))

    def resumed_series(self) -> Series:
        """A stream for a resume token to ``thaw``: a placeholder history, every number of which the token sets."""
        return self.series([1.0] * max(self.pre.min_history, self.pre.prefix + 1), 0)


class Series(Holding):
    """One stream; see the module docstring. Positions count from the start of the window (the month of position 0
    is ``month0``); ``values`` keeps only the model-unit values that later steps read (the last ``max(lags)``), from
    position ``first`` on, so a long ``Observe`` stream holds no more than a short one."""

    __slots__ = ("first", "month0", "next_target", "observed", "pre", "recent", "scale", "task", "values")

    def __init__(self, task: ForecastTask, history: list[float], month0: int) -> None:
        self.task, self.pre = task, task.pre
        scaling = self.pre.scaling
        usable = min(scaling.context, len(history) - self.pre.prefix)
        window = history[-(self.pre.prefix + usable):]
        self.scale = rules.fit_scale(window, usable, scaling.eps)
        self.month0 = month0 + len(history) - len(window)  # month (0 = January) of position 0
        self.values = self._encode(window)
        self.first = 0  # the position of values[0]
        self.next_target = self.pre.prefix + 1
        self.observed = len(history)
        self.recent = [float(v) for v in history[len(history) - self.pre.window:]] if self.pre.window else []

    def take(self) -> Lease:
        return self.task.runner.open("step")

    def _encode(self, values: list[float]) -> list[float]:
        return rules.encode(values, self.scale, self.pre.scaling.transform, self.pre.scaling.floor).tolist()

    async def _step(self, target: int, values: list[float]) -> np.ndarray:
        """The quantiles at position ``target``, reading ``values`` (from position ``first`` on)."""
        end = target - self.first
        recent = np.asarray(values[end - max(self.pre.lags) : end])[None]
        inputs = rules.step_inputs(recent, np.array([self.month0 + target]), self.pre.season, self.pre.lags)
        return (await self.task.runner.run("step", inputs, self.slots))["quantiles"][0]

    async def observe(self, values: list[float]) -> None:
        """Append observations (scaled with the stream's fixed scale) and read them teacher-forced."""
        self.values.extend(self._encode(values))
        self.observed += len(values)
        if self.pre.window:
            self.recent = (self.recent + [float(v) for v in values])[-self.pre.window:]
        end = self.first + len(self.values)
        for target in range(self.next_target, end):
            await self._step(target, self.values)
        self.next_target = max(self.next_target, end)
        unread = len(self.values) - max(self.pre.lags)  # no later step reads these
        if unread > 0:
            del self.values[:unread]
            self.first += unread

    FROZEN = ("values", "first", "next_target", "observed", "month0", "scale", "recent")

    def frozen(self) -> tuple[Arrays, dict[str, Any]]:
        """Between messages: the state slot and the stream's numbers, for a resume token (``thaw`` takes them)."""
        return self.task.runner.pools["step"].snapshot(self.slots), {name: getattr(self, name) for name in self.FROZEN}

    def thaw(self, state: Arrays, values: list[float], **numbers: Any) -> None:
        self.task.runner.pools["step"].restore(self.slots, state)
        self.values = list(values)
        for name, value in numbers.items():
            setattr(self, name, list(value) if name == "recent" else value)

    async def forecast(self, horizon: int, levels: list[int]) -> AsyncIterator[ForecastStep]:
        """``horizon`` steps past the last observation; the stream's state is left as it was."""
        pool = self.task.runner.pools["step"]
        saved = pool.snapshot(self.slots)
        values = list(self.values)
        start = self.first + len(values)
        adjustment = self.pre.adjustment(self.recent, horizon) if self.pre.window else None
        try:
            for ahead, target in enumerate(range(start, start + horizon), start=1):
                quantiles = (await self._step(target, values)).astype(np.float64)
                values.append(float(quantiles[self.pre.median]))
                decoded = rules.decode(quantiles, self.scale, self.pre.scaling.transform)
                if adjustment is not None:
                    decoded = adjustment.apply(decoded[None], ahead - 1)[0]
                yield ForecastStep(ahead, (self.month0 + target) % self.pre.season + 1, decoded[self.pre.median],
                                   [self.pre.quantiles[i] for i in levels], decoded[levels].tolist())
        finally:
            pool.restore(self.slots, saved)
