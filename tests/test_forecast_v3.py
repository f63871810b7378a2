"""Version 3's rules (``contract.forecast``: the Theta combination and the band calibration), on synthetic
series, and how a manifest declares them (version 2's has none and keeps its quantiles as they are)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from contract.forecast import adjust, noise, normal_quantile, prepare, seasonal, theta_forecast
from contract.manifest import Calibration, Combination, ManifestError, parse_manifest

MODELS = Path(__file__).resolve().parent.parent / "models"
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def seasonal_series(n: int, noise_level: float = 0.0, seed: int = 0) -> np.ndarray:
    months = np.arange(n)
    rng = np.random.default_rng(seed)
    return (200 + 0.5 * months) * (1 + 0.1 * np.sin(2 * np.pi * months / 12)) + noise_level * rng.standard_normal(n)


def model_quantiles(centre: np.ndarray, spread: float) -> np.ndarray:
    """Ordered quantiles ``[horizon, 9]`` around ``centre`` (a stand-in for the model's)."""
    return centre[:, None] + spread * np.array([normal_quantile(level) for level in LEVELS])[None, :]


def test_normal_quantile() -> None:
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-9)
    assert normal_quantile(0.9) == pytest.approx(1.2815515655, abs=1e-8)
    assert normal_quantile(0.01) == pytest.approx(-2.3263478740, abs=1e-8)
    assert normal_quantile(0.2) == pytest.approx(-normal_quantile(0.8))


def test_theta_follows_a_seasonal_trend_and_a_flat_series() -> None:
    series = seasonal_series(120 + 24)
    assert seasonal(series[:120], 12) and not seasonal(np.full(120, 5.0), 12)
    forecast = theta_forecast(series[:120], 24, 12)
    # the seasonal pattern is recovered: the error is the Theta method's half trend, not the 10 % swing
    assert np.abs(forecast / series[120:] - 1).max() < 0.06
    assert np.corrcoef(np.diff(forecast), np.diff(series[120:]))[0, 1] > 0.95
    np.testing.assert_allclose(theta_forecast(np.full(60, 7.0), 12, 12), 7.0)
    # additive seasonality when a value is not positive; short histories skip the seasonal test
    assert np.isfinite(theta_forecast(series[:120] - 300, 24, 12)).all()
    assert theta_forecast(series[:30], 5, 12).shape == (5,)


def test_noise_is_the_in_sample_seasonal_naive_mae() -> None:
    series = seasonal_series(60, noise_level=3.0)
    assert noise(series, 12) == pytest.approx(np.mean(np.abs(series[12:] - series[:-12])))
    assert noise(np.array([1.0, 3.0, 2.0]), 12) == pytest.approx(1.5)  # shorter than a season: lag 1


def test_the_rules_combine_the_median_and_floor_the_band() -> None:
    history = seasonal_series(96, noise_level=5.0)
    theta = theta_forecast(history, 24, 12)
    raw = model_quantiles(np.full(24, 300.0), spread=0.5)  # a far too narrow band
    np.testing.assert_array_equal(adjust(raw, history, LEVELS, 12, "log"), raw)  # no rules: unchanged
    combined = adjust(raw, history, LEVELS, 12, "log", Combination("theta", 0.25, 240))
    np.testing.assert_allclose(combined[:, 4], 0.25 * 300 + 0.75 * theta)
    np.testing.assert_allclose(combined - combined[:, [4]], raw - raw[:, [4]])  # the band moves with the median
    calibration = Calibration("seasonal_naive_mae", 1.0, 1.0, 0.5, 240)
    calibrated = adjust(raw, history, LEVELS, 12, "log", None, calibration)
    d = noise(history, 12)
    np.testing.assert_allclose(calibrated[0, 8] - calibrated[0, 4], d)  # the floor: 1 noise unit at 0.9, step 1
    np.testing.assert_allclose(calibrated[12, 8] - calibrated[12, 4], 1.5 * d)  # growth 0.5 over a season
    np.testing.assert_allclose(calibrated[:, 4], raw[:, 4])
    assert (np.diff(calibrated, axis=1) >= 0).all()
    wide = model_quantiles(np.full(24, 300.0), spread=10 * d)  # a band wider than the floor keeps its width
    np.testing.assert_allclose(adjust(wide, history, LEVELS, 12, "log", None, calibration), wide)
    noisy = seasonal_series(96, noise_level=20.0)
    band = adjust(raw, noisy, LEVELS, 12, "log", None, calibration)
    assert (band[:, 8] - band[:, 0] > calibrated[:, 8] - calibrated[:, 0]).all()  # a noisier series, a wider band
    low = adjust(model_quantiles(np.full(24, 1.0), 0.5), history, LEVELS, 12, "log", None, calibration)
    assert low.min() == 0.0 and (np.diff(low, axis=1) >= 0).all()  # clipped at zero, still ordered


def test_step_by_step_equals_the_whole_horizon() -> None:
    history = seasonal_series(100, noise_level=4.0, seed=3)
    raw = model_quantiles(np.linspace(250, 270, 24), spread=2.0)
    rules = (Combination("theta", 0.4, 60), Calibration("seasonal_naive_mae", 1.25, 0.75, 0.25, 48))
    whole = adjust(raw, history, LEVELS, 12, "log", *rules)
    steps = prepare(history, 24, LEVELS, 12, "log", *rules)
    np.testing.assert_array_equal(np.concatenate([steps.apply(raw[k : k + 1], k) for k in range(24)]), whole)
    # each rule reads its own window of the history
    np.testing.assert_array_equal(adjust(raw, history[-60:], LEVELS, 12, "log", *rules), whole)


def test_manifests_declare_the_rules() -> None:
    v2 = json.loads((MODELS / "forecast" / "2" / "manifest.json").read_text())
    v3 = json.loads((MODELS / "forecast" / "3" / "manifest.json").read_text())
    old, new = parse_manifest(v2, "2.json").preprocessing, parse_manifest(v3, "3.json").preprocessing
    assert old.combination is None and old.calibration is None and old.window == 0
    assert new.combination == Combination("theta", 0.4, 240) and new.window == 240
    assert new.calibration == Calibration("seasonal_naive_mae", 1.0, 1.0, 0.25, 240)
    # the same step graph and rollout
    assert v3["files"] == v2["files"]
    assert {k: v for k, v in v3["preprocessing"].items() if k not in ("combination", "calibration")} == \
        v2["preprocessing"]
    cases = {("combination", "weight"): (1.5, "weight is 1.5, expected a number in [0, 1]"),
             ("combination", "method"): ("arima", "method is 'arima', expected one of"),
             ("calibration", "floor"): (-1, "floor is -1.0, expected a number >= 0"),
             ("calibration", "window"): (1, "window is 1, expected an integer >= 2")}
    for (rule, key), (value, message) in cases.items():
        changed = copy.deepcopy(v3)
        changed["preprocessing"][rule][key] = value
        with pytest.raises(ManifestError, match=f"preprocessing.{rule}.{message}".replace("[", r"\[")
                           .replace("]", r"\]").replace("(", r"\(")):
            parse_manifest(changed, "3.json")
