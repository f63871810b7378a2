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
