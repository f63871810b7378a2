"""The committed models in models/ load, validate and still score what their manifests say."""

from pathlib import Path

from export.check_shipped import EVALUATORS, check
from server.repository import load_repository

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_shipped_models_score_their_manifest_metrics(data_dir: Path) -> None:
    lines = check(MODELS, data_dir)
    tasks = {model.task for versions in load_repository(MODELS).values() for model in versions.values()}
    assert {"sentiment", "forecast"} <= tasks
    assert len(lines) == sum(1 for task in tasks if task in EVALUATORS)
