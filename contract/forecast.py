"""Forecast scaling and step inputs, torch-free: training, export, the reference runtime and the server use these.

* **Scaling.** ``scale = mean(|y|) + eps`` over the last ``context`` observations before the
  forecast origin. With ``transform="log"`` the model reads ``z = log(max(y / scale, floor))``
  and a model quantile ``q`` means ``scale * exp(q)``; with ``"identity"`` it reads ``z = y / scale``
  and ``q`` means ``scale * q``. Both maps are increasing, so quantiles stay quantiles.
* **Step inputs** for a target month ``t``: ``value = z[t-1]`` (``[B, 1]``) and ``features`` =
  one-hot month of year of ``t`` (``season`` columns, January first), then ``z[t-lag]`` per lag.
  Past the origin, unknown values are the model's own fed-back medians.
* **Values the model reads** (``unreadable``): finite, at most ``MAX_MAGNITUDE`` in size (the
  scale times ``exp(q)`` must stay a float64), and with ``transform="log"`` not negative: the
  log of a ratio to the mean has no meaning for them (the floor would read every negative value
  as a zero), and the model was trained on non-negative series.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TRANSFORMS = ("log", "identity")
EPS = 1e-3
FLOOR = 1e-3  # log transform: values below FLOOR * scale (zeros) are clipped there
MAX_MAGNITUDE = 1e100  # far from overflow in scale * exp(q), far beyond any series


def unreadable(value: float, transform: str) -> str | None:
    """Why a model with ``transform`` cannot read ``value``, or ``None`` when it can (module docstring)."""
    if not math.isfinite(value):
        return "values must be finite (no NaN or inf)"
    if abs(value) > MAX_MAGNITUDE:
        return f"values must be within ±{MAX_MAGNITUDE:g}"
    if transform == "log" and value < 0:
        return "this model reads the log of values scaled by their mean, so values must not be negative"
    return None


def prefix_length(lags: tuple[int, ...]) -> int:
    """Observed values needed before the context so that the first step has all its lags."""
    return max(max(lags, default=1) - 1, 0)


def fit_scale(history: np.ndarray, context: int, eps: float = EPS) -> float:
    """The scaling rule: mean absolute value of the last ``context`` observations, plus ``eps``."""
    return float(np.mean(np.abs(np.asarray(history, dtype=np.float64)[-context:]))) + eps


def encode(values: Any, scale: Any, transform: str, floor: float = FLOOR) -> np.ndarray:
    """Model units of ``values`` (NaN stays NaN)."""
    ratio = np.asarray(values, dtype=np.float64) / scale
    return np.log(np.maximum(ratio, floor)) if transform == "log" else ratio


def decode(model_values: np.ndarray, scale: Any, transform: str) -> np.ndarray:
    """The inverse of ``encode`` (exact above the floor)."""
    return scale * (np.exp(model_values) if transform == "log" else model_values)


def step_inputs(recent: np.ndarray, months: np.ndarray, season: int, lags: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The step graph's ``value`` and ``features`` for target ``t`` of each row.

    ``recent [B, >= max(lags)]`` holds model-unit values up to ``z[t-1]`` (its last column);
    ``months [B]`` is the month of year of ``t`` (0 = January).
    """
    month = np.eye(season, dtype=np.float32)[np.asarray(months) % season]
    lagged = recent[:, [-lag for lag in lags]]
    return {"value": recent[:, -1:].astype(np.float32),
            "features": np.concatenate([month, lagged.astype(np.float32)], axis=1)}


# --- version 3: a statistical combination for the median and per-series band calibration --------------------
#
# Both rules read only the history a request sends (its last ``window`` values, in the series' units) and act on
# the decoded quantiles of each forecast step, after the step graph: the graph and its fed-back medians are the
# model's own, so a manifest without these rules behaves exactly as before.
#
# * **Combination** (``combination`` in the manifest's preprocessing): the Theta method (Assimakopoulos and
#   Nikolopoulos, the M3 winner; Hyndman and Billah's form). When the history is seasonal (the lag-``season``
#   autocorrelation test at 90 %), it is divided by classical multiplicative seasonal indices (additive when a
#   value is not positive); simple exponential smoothing (alpha from ``THETA_ALPHAS``, least squares of the
#   one-step errors) plus half the least-squares slope of the adjusted series gives the forecast, which is then
#   reseasonalised. The served median is ``weight * model + (1 - weight) * theta``; every quantile moves with it.
# * **Calibration** (``calibration``): the noise ``d`` of a series is its in-sample seasonal-naive MAE over its
#   last ``window`` values (the MASE scale). Each quantile's offset from the median, ``o``, becomes
#   ``side * max(width * |o|, floor * d * |z(level)| / z(0.9) * (1 + growth * (step - 1) / season))``,
#   ``side`` -1 below the median and +1 above, ``z`` the standard normal quantile: at least ``floor`` noise units
#   at the 0.9 level, widening with the step. Offsets on each side stay ordered, so the quantiles do. With
#   ``transform="log"`` they are clipped at 0.

THETA_ALPHAS = tuple(round(0.05 * k, 2) for k in range(1, 21))  # 0.05 … 1.0
_Z90 = 1.2815515655446004  # the standard normal 0.9 quantile


def normal_quantile(level: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9), numpy-free of scipy."""
    if not 0 < level < 1:
        raise ValueError(f"level {level} must be in (0, 1)")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if level < 0.02425 or level > 1 - 0.02425:
        q = math.sqrt(-2 * math.log(min(level, 1 - level)))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        return x if level < 0.5 else -x
    q = level - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def seasonal(history: np.ndarray, season: int) -> bool:
    """The Theta method's seasonality test: ``|r_season| > 1.645 sqrt((1 + 2 sum_{k<season} r_k^2) / n)``."""
    y = np.asarray(history, dtype=np.float64)
    n = len(y)
    if season < 2 or n < 3 * season:
        return False
    centred = y - y.mean()
    total = float(centred @ centred)
    if total <= 0:
        return False
    acf = np.array([float(centred[k:] @ centred[: n - k]) / total for k in range(1, season + 1)])
    limit = 1.6448536269514722 * math.sqrt((1 + 2 * float(np.sum(acf[:-1] ** 2))) / n)
    return abs(acf[-1]) > limit


def seasonal_indices(history: np.ndarray, season: int, multiplicative: bool) -> np.ndarray:
    """Classical decomposition: per position ``i % season`` of the history, the mean ratio (or difference) of the
    values to their centred ``2 x season`` moving average, normalised to mean 1 (or 0)."""
    y = np.asarray(history, dtype=np.float64)
    weights = np.r_[0.5, np.ones(season - 1), 0.5] / season if season % 2 == 0 else np.ones(season) / season
    trend = np.convolve(y, weights, mode="valid")  # trend[j] centres on y[j + half]
    half = (len(weights) - 1) // 2
    positions = np.arange(half, half + len(trend))
    detrended = y[positions] / trend if multiplicative else y[positions] - trend
    index = np.array([detrended[positions % season == p].mean() for p in range(season)])
    return index / index.mean() if multiplicative else index - index.mean()


def theta_forecast(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """The Theta method's point forecast ``[horizon]`` from ``history`` (the block comment above)."""
    y = np.asarray(history, dtype=np.float64)
    n = len(y)
    multiplicative = bool((y > 0).all())
    index = None
    if seasonal(y, season):
        index = seasonal_indices(y, season, multiplicative)
        factors = index[np.arange(n) % season]
        y = y / factors if multiplicative else y - factors
    alphas = np.asarray(THETA_ALPHAS)
    level = np.full(len(alphas), y[0])
    sse = np.zeros(len(alphas))
    for value in y[1:]:
        error = value - level
        sse += error * error
        level = level + alphas * error
    best = int(np.argmin(sse))
    alpha, last = float(alphas[best]), float(level[best])
    t = np.arange(n, dtype=np.float64)
    slope = float(np.polyfit(t, y, 1)[0]) if n > 1 else 0.0
    steps = np.arange(1, horizon + 1, dtype=np.float64)
    forecast = last + 0.5 * slope * (steps - 1 + 1 / alpha - (1 - alpha) ** n / alpha)
    if index is not None:
        factors = index[(n + steps.astype(np.int64) - 1) % season]
        forecast = forecast * factors if multiplicative else forecast + factors
    return forecast


def noise(history: np.ndarray, season: int) -> float:
    """The in-sample seasonal-naive MAE of ``history`` (the MASE scale); the lag-1 MAE when it spans no season."""
    y = np.asarray(history, dtype=np.float64)
    lag = season if len(y) > season else 1
    return float(np.mean(np.abs(y[lag:] - y[:-lag]))) if len(y) > lag else 0.0


class Adjustment:
    """The version 3 rules prepared for one series and a horizon (``prepare``): the Theta forecast and the band
    floors of every step, so that a server streaming one step at a time applies them step by step."""

    def __init__(self, theta: np.ndarray | None, weight: float, least: np.ndarray | None, width: float,
                 median: int, clip: bool) -> None:
        self.theta, self.weight, self.least, self.width = theta, weight, least, width
        self.median, self.clip = median, clip

    def apply(self, quantiles: np.ndarray, first: int = 0) -> np.ndarray:
        """Decoded quantiles ``[k, Q]`` (series units) of steps ``first + 1 … first + k`` after the rules."""
        q = np.array(quantiles, dtype=np.float64)
        rows = slice(first, first + q.shape[0])
        centre = q[:, self.median].copy()
        offsets = q - centre[:, None]
        if self.theta is not None:
            centre = self.weight * centre + (1 - self.weight) * self.theta[rows]
        if self.least is not None:
            side = np.sign(np.arange(q.shape[1]) - self.median)  # -1 below the median, +1 above (ordered quantiles)
            offsets = side * np.maximum(self.width * np.abs(offsets), self.least[rows])
        result = centre[:, None] + offsets
        return np.maximum(result, 0.0) if self.clip else result


def prepare(history: np.ndarray, horizon: int, levels: tuple[float, ...], season: int, transform: str,
            combination: Any = None, calibration: Any = None) -> Adjustment:
    """The rules for ``horizon`` steps after ``history`` (the block comment above). ``combination`` has ``weight``
    and ``window``; ``calibration`` has ``width``, ``floor``, ``growth`` and ``window`` (``contract.manifest``'s
    ``Combination`` and ``Calibration``); ``None`` skips a rule."""
    history = np.asarray(history, dtype=np.float64)
    theta = least = None
    if combination is not None:
        theta = theta_forecast(history[-combination.window:], horizon, season)
    if calibration is not None:
        d = noise(history[-calibration.window:], season)
        z = np.array([abs(normal_quantile(level)) if level != 0.5 else 0.0 for level in levels]) / _Z90
        steps = np.arange(horizon, dtype=np.float64)
        least = calibration.floor * d * (1 + calibration.growth * steps / season)[:, None] * z[None, :]
    return Adjustment(theta, getattr(combination, "weight", 1.0), least, getattr(calibration, "width", 1.0),
                      levels.index(0.5), transform == "log")


def adjust(quantiles: np.ndarray, history: np.ndarray, levels: tuple[float, ...], season: int, transform: str,
           combination: Any = None, calibration: Any = None) -> np.ndarray:
    """The version 3 rules on one series' decoded quantiles ``[horizon, Q]`` (series units, steps 1, 2, …)."""
    if combination is None and calibration is None:
        return np.array(quantiles, dtype=np.float64)
    return prepare(history, len(quantiles), levels, season, transform, combination, calibration).apply(quantiles)
