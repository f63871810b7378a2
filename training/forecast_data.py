"""aus_retail as arrays, the time splits and the training windows.

The scaling rule and the step inputs are ``contract/forecast.py``, shared with export, the
reference runtime and the server (they re-export from here for training's own modules).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from contract.forecast import fit_scale, prefix_length

DATA_FILE = Path("data/forecast/aus_retail.csv")
SEASON = 12
HORIZON = 24
MIN_LENGTH = 2 * HORIZON + 2 * SEASON  # test + validation horizons and two seasons of history


@dataclass
class Panel:
    """Monthly series; ``start_months[i]`` is the month of year (0 = January) of ``values[i][0]``."""

    ids: list[str]
    names: list[str]
    values: list[np.ndarray]
    start_months: np.ndarray

    def subset(self, index: list[int] | np.ndarray) -> Panel:
        return Panel(
            [self.ids[i] for i in index],
            [self.names[i] for i in index],
            [self.values[i] for i in index],
            self.start_months[np.asarray(index, dtype=np.int64)],
        )

    def cut(self, drop_last: int) -> Panel:
        """Every series without its last ``drop_last`` points (the history at an earlier origin)."""
        return Panel(self.ids, self.names, [v[: len(v) - drop_last] for v in self.values], self.start_months)


def load_panel(path: Path = DATA_FILE, min_length: int = MIN_LENGTH) -> Panel:
    """Series with at least ``min_length`` points, ordered by id. aus_retail has no gaps inside a series."""
    frame = pd.read_csv(path)
    frame["month"] = pd.to_datetime(frame["Month"], format="%Y %b")
    ids, names, values, starts = [], [], [], []
    for series_id, group in frame.sort_values("month").groupby("Series ID", sort=True):
        if len(group) < min_length:
            continue
        first = group.iloc[0]
        ids.append(str(series_id))
        names.append(f"{first['State']}: {first['Industry']}")
        values.append(group["Turnover"].to_numpy(dtype=np.float64))
        starts.append(first["month"].month - 1)
    return Panel(ids, names, values, np.asarray(starts, dtype=np.int64))


def feature_size(lags: tuple[int, ...]) -> int:
    return SEASON + len(lags)


def season_naive_mae(history: np.ndarray, season: int = SEASON) -> float:
    """In-sample MAE of the seasonal naive forecast: the MASE denominator."""
    return float(np.mean(np.abs(history[season:] - history[:-season])))


def training_windows(panel: Panel, context: int, lags: tuple[int, ...], horizon: int = HORIZON) -> np.ndarray:
    """``(series, origin)`` pairs whose whole window (lag prefix, context, horizon) lies in the panel."""
    first = prefix_length(lags) + context
    pairs = [(i, origin) for i, v in enumerate(panel.values) for origin in range(first, len(v) - horizon + 1)]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def gather_windows(
    panel: Panel, pairs: np.ndarray, context: int, lags: tuple[int, ...], horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw windows ``y[origin - context - prefix : origin + horizon]`` ``[B, W]``, the month of
    their first value ``[B]`` and their scales ``[B]`` (from the ``context`` values before the origin).

    The horizon part is NaN where the series ends before ``origin + horizon`` (forecasting the future).
    """
    prefix = prefix_length(lags)
    width = prefix + context + horizon
    windows = np.full((len(pairs), width), np.nan)
    months = np.empty(len(pairs), dtype=np.int64)
    scales = np.empty(len(pairs))
    for row, (i, origin) in enumerate(pairs):
        series = panel.values[i]
        start = origin - context - prefix
        if start < 0:
            raise ValueError(f"series {panel.ids[i]} has {origin} points before the origin, needs {context + prefix}")
        part = series[start : origin + horizon]
        windows[row, : len(part)] = part
        months[row] = panel.start_months[i] + start
        scales[row] = fit_scale(series[:origin], context)
    return windows, months, scales
