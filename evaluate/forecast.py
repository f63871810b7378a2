"""Forecast rollout with the ``step`` graph: the scaling and step inputs of ``contract/forecast.py``."""

from __future__ import annotations

import numpy as np

from contract.forecast import decode, encode, fit_scale, step_inputs
from contract.manifest import ForecastPreprocessing, Reference
from contract.repository import Model

STEP = "step"


def preprocessing(model: Model) -> ForecastPreprocessing:
    return model.preprocessing(ForecastPreprocessing)


def forecast_quantiles(model: Model, histories: list[np.ndarray], start_months: np.ndarray, horizon: int) -> np.ndarray:
    """Quantile forecasts ``[N, horizon, Q]`` in the series' units from the end of every history.

    The training rollout (``training/forecast_model.rollout``) with the ``step`` graph, all series in
    one batch: each reads its last ``prefix + min(context, n - prefix)`` values teacher-forced, then
    feeds its median back; when the manifest declares them, the combination and calibration rules then
    adjust each series' quantiles (``contract.forecast.adjust``). Windows are right-aligned so that every
    series reaches its forecast origin at the same step; a shorter window joins the batch later.
    ``start_months``: the month of year (0 = January) of each history's first value.
    """
    pre = preprocessing(model)
    scaling, prefix = pre.scaling, pre.prefix
    lengths = np.array([len(h) for h in histories])
    usable = np.minimum(scaling.context, lengths - prefix)
    origin = prefix + int(usable.max())  # the common forecast origin of the right-aligned windows
    scales = np.array([fit_scale(h, u, scaling.eps) for h, u in zip(histories, usable, strict=True)])
    z = np.full((len(histories), origin + horizon), np.nan)
    for row, (history, size) in enumerate(zip(histories, usable, strict=True)):
        window = np.asarray(history)[-(prefix + size) :]
        z[row, origin - prefix - size : origin] = encode(window, scales[row], scaling.transform, scaling.floor)
    months0 = np.asarray(start_months) + lengths - origin  # month of year (mod season) of column 0
    first_target = origin - usable + 1  # per series: its first step with every lag observed
    session, specs = model.sessions[STEP], model.manifest.state_of(STEP)
    if any(isinstance(s.initial, Reference) for s in specs):
        raise ValueError(f"{model.name}/{model.version}: a forecast step state must start from a constant")
    names = [o.name for o in session.get_outputs()]
    state = {s.input: np.full((len(histories), *s.shape), s.initial, dtype=s.dtype) for s in specs}
    quantiles = np.empty((len(histories), horizon, len(pre.quantiles)))
    for target in range(int(first_target.min()), origin + horizon):
        rows = np.flatnonzero(first_target <= target)
        feed = {name: array[rows] for name, array in state.items()}
        feed |= step_inputs(z[rows, :target], months0[rows] + target, pre.season, pre.lags)
        results = dict(zip(names, session.run(names, feed), strict=True))
        for s in specs:
            state[s.input][rows] = results[s.output]
        if target >= origin:
            quantiles[rows, target - origin] = results["quantiles"]
            z[rows, target] = results["quantiles"][:, pre.median]
    decoded = decode(quantiles, scales[:, None, None], scaling.transform)
    if pre.window:  # version 3's rules (contract.forecast.adjust), from each series' own history
        decoded = np.stack([pre.adjust(q, h) for q, h in zip(decoded, histories, strict=True)])
    return decoded
