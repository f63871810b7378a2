"""The committed models in models/ load, validate and still score what their manifests say."""

from pathlib import Path

from contract.repository import load_repository
from evaluate.check import EVALUATORS, check

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_shipped_models_score_their_manifest_metrics(data_dir: Path) -> None:
    lines = check(MODELS, data_dir)
    models = [model for versions in load_repository(MODELS).values() for model in versions.values()]
    assert {"sentiment", "forecast", "translation"} <= {model.task for model in models}
    # Every model with an evaluator reports at least one metric (lines start with "name/version").
    evaluated = {f"{model.name}/{model.version}" for model in models if model.task in EVALUATORS}
    assert {line.split(" ", 1)[0] for line in lines} == evaluated
