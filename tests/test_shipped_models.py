"""The committed models in models/ load, validate and still score what their manifests say."""

from pathlib import Path

import numpy as np

from contract.repository import load_repository
from evaluate import forecast_quantiles
from evaluate.check import EVALUATORS, check

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_shipped_models_score_their_manifest_metrics(data_dir: Path) -> None:
    lines = check(MODELS, data_dir)
    models = [model for versions in load_repository(MODELS).values() for model in versions.values()]
    assert {"sentiment", "forecast", "translation"} <= {model.task for model in models}
    # Every model with an evaluator reports at least one metric (lines start with "name/version").
    evaluated = {f"{model.name}/{model.version}" for model in models if model.task in EVALUATORS}
    assert {line.split(" ", 1)[0] for line in lines} == evaluated


def test_the_newest_forecaster_follows_a_steady_trend_without_running_away() -> None:
    """A synthetic CO2-like series (steady linear rise, small seasonal swing): 24 months ahead the median
    stays within 4 % of the continued trend (version 1 is 4 % over at month 1 and 12 % at month 24;
    version 2 1.0 % and 2.1 %; version 3, with its Theta combination, 0.4 % and 0.6 %)."""
    forecast = load_repository(MODELS)["forecast"]
    model = forecast[max(forecast)]
    months = np.arange(120 + 24)
    series = (320 + 0.12 * months) * (1 + 0.01 * np.sin(2 * np.pi * months / 12))
    median = forecast_quantiles(model, [series[:120]], np.array([0]), 24)[0, :, model.manifest.preprocessing.median]
    error = median / series[120:] - 1
    assert np.abs(error).max() < 0.04, error
