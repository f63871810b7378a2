"""Version 3's constants: the Theta combination weight and the band calibration, chosen on validation only.

    python -m training.forecast_v3 [--model models/forecast/2] [--out runs/forecast-v3] [--score 0|1]

The step graph is version 2's. On the validation horizon of the training collections (the 24 months
before each series' test horizon, forecast from the history before them: what the trainer's
validation reads), it scores the v2 quantiles adjusted by ``contract.forecast.adjust`` over a grid:

1. ``window`` and ``weight`` (combination): the lowest mean validation MASE;
2. ``width``, ``floor``, ``growth`` (calibration, over the same window): among the candidates whose
   validation 10–90 % coverage is within 0.78–0.82, the lowest quantile loss (else the closest coverage).

Nothing here reads the test horizons. ``--score 1`` then scores the chosen rules once on aus_retail's
test horizon and on the hold-out (with Theta alone for reference) and writes ``scores.json``; with
``--export models`` it also writes ``models/3/`` (v2's ``step.onnx`` and manifest, the rules and the scores).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from contract.forecast import adjust, theta_forecast
from contract.manifest import Calibration, Combination
from contract.repository import load_model
from evaluate.forecast import forecast_quantiles
from training.forecast import scores
from training.forecast_data import DATA_DIR, HORIZON, SEASON, Panel, holdout_panel, load_panel, training_panel
from training.forecast_model import QUANTILES

WINDOWS = (60, 120, 240)
WEIGHTS = tuple(round(0.1 * k, 1) for k in range(11))
WIDTHS = (1.0, 1.25, 1.5, 2.0)
FLOORS = tuple(round(0.25 * k, 2) for k in range(13))  # 0 … 3 noise units at the 0.9 level
GROWTHS = (0.0, 0.25, 0.5, 1.0)
COVERAGE = (0.78, 0.82)


def adjusted(raw: np.ndarray, history: Panel, combination: Combination | None, calibration: Calibration | None
             ) -> np.ndarray:
    return np.stack([adjust(q, h, tuple(QUANTILES), SEASON, "log", combination, calibration)
                     for q, h in zip(raw, history.values, strict=True)])


def choose(model_dir: Path, data_dir: Path) -> dict:
    model = load_model(model_dir)
    panel = training_panel(data_dir=data_dir)
    history = panel.cut(2 * HORIZON)
    actuals = np.stack([v[-2 * HORIZON: -HORIZON] for v in panel.values])
    raw = forecast_quantiles(model, history.values, history.start_months, HORIZON)
    table = {"v2": scores(history, actuals, raw)}
    best = None
    for window in WINDOWS:
        theta = np.stack([theta_forecast(h[-window:], HORIZON, SEASON) for h in history.values])
        for weight in WEIGHTS:
            median = raw[..., QUANTILES.index(0.5)]
            q = raw + ((weight - 1) * median + (1 - weight) * theta)[..., None]
            row = scores(history, actuals, np.maximum(q, 0))
            table[f"combination window={window} weight={weight}"] = row
            if best is None or row["mase"] < best[0]:
                best = (row["mase"], window, weight)
    _, window, weight = best
    combination = Combination("theta", weight, window)
    candidates = []
    for width, floor, growth in itertools.product(WIDTHS, FLOORS, GROWTHS):
        calibration = Calibration("seasonal_naive_mae", width, floor, growth, window)
        row = scores(history, actuals, adjusted(raw, history, combination, calibration))
        table[f"calibration width={width} floor={floor} growth={growth}"] = row
        candidates.append((row, calibration))
    inside = [c for c in candidates if COVERAGE[0] <= c[0]["coverage_10_90"] <= COVERAGE[1]]
    if inside:
        row, calibration = min(inside, key=lambda c: c[0]["quantile_loss"])
    else:
        row, calibration = min(candidates, key=lambda c: abs(c[0]["coverage_10_90"] - 0.8))
    return {"combination": vars(combination), "calibration": vars(calibration), "validation_v3": row,
            "validation_v2": table["v2"],
            "validation_theta": table[f"combination window={window} weight=0.0"], "grid": table}


def score(model_dir: Path, data_dir: Path, chosen: dict) -> dict:
    model = load_model(model_dir)
    combination, calibration = Combination(**chosen["combination"]), Calibration(**chosen["calibration"])
    result = {}
    for name, panel in (("test", load_panel(data_dir / "aus_retail.csv")), ("holdout", holdout_panel(data_dir))):
        history = panel.cut(HORIZON)
        actuals = np.stack([v[-HORIZON:] for v in panel.values])
        raw = forecast_quantiles(model, history.values, history.start_months, HORIZON)
        theta = np.stack([theta_forecast(h[-combination.window:], HORIZON, SEASON) for h in history.values])
        result[name] = {
            "v2": scores(history, actuals, raw),
            "v3": scores(history, actuals, adjusted(raw, history, combination, calibration)),
            "v2+combination": scores(history, actuals, adjusted(raw, history, combination, None)),
            "v2+calibration": scores(history, actuals, adjusted(raw, history, None, calibration)),
            "theta": scores(history, actuals, np.repeat(theta[..., None], len(QUANTILES), axis=-1)),
        }
    return result


RULES = {
    "combination": "served median = weight * model median + (1 - weight) * theta, theta = the Theta method on the "
                   "last window observed values (contract.forecast.theta_forecast); every quantile moves with "
                   "the median",
    "calibration": "d = in-sample seasonal-naive MAE of the last window observed values; each quantile's offset o "
                   "from the median becomes side * max(width * |o|, floor * d * |z(level)| / z(0.9) * (1 + growth "
                   "* (step - 1) / season)); clipped at 0 (log transform)",
}


def export(model_dir: Path, out: Path, chosen: dict, result: dict) -> Path:
    """``out/<version>/``: version 2's step graph (copied) with its manifest plus the rules and the scores."""
    import hashlib
    import shutil

    manifest = json.loads((model_dir / "manifest.json").read_text())
    version = int(model_dir.name) + 1
    folder = out / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / "step.onnx", folder / "step.onnx")
    manifest["files"] = {"step.onnx": hashlib.sha256((folder / "step.onnx").read_bytes()).hexdigest()}
    manifest["description"] = ("3-member LSTM quantile forecaster (version 2's graph) + Theta combination and "
                               "noise-scaled bands (monthly)")
    manifest["preprocessing"]["combination"] = {**chosen["combination"], "rule": RULES["combination"]}
    manifest["preprocessing"]["calibration"] = {**chosen["calibration"], "rule": RULES["calibration"]}
    metrics = {"baselines": manifest["metrics"]["baselines"], "dataset_sizes": manifest["metrics"]["dataset_sizes"]}
    for split in ("test", "holdout"):
        metrics |= {f"{split}_{name}": value for name, value in result[split]["v3"].items()}
        metrics["baselines"].setdefault("theta", {}).update(
            {f"{split}_{name}": value for name, value in result[split]["theta"].items() if name != "coverage_10_90"})
    metrics["validation"] = {key: chosen[key] for key in ("validation_v2", "validation_v3", "validation_theta")}
    manifest["metrics"] = metrics
    manifest["provenance"] = {**manifest["provenance"], "command": "python -m training.forecast_v3 --score 1 "
                              f"--export {out}", "step_graph": f"{model_dir.parent.name}/{model_dir.name}"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/forecast/2"))
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("runs/forecast-v3"))
    parser.add_argument("--score", type=int, default=0)
    parser.add_argument("--export", type=Path, default=None, help="with --score 1: write <export>/<version>/")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chosen_file = args.out / "chosen.json"
    if not args.score:
        chosen = choose(args.model, args.data)
        chosen_file.write_text(json.dumps(chosen, indent=1))
        print(json.dumps({k: v for k, v in chosen.items() if k != "grid"}, indent=1))
        return
    result = score(args.model, args.data, json.loads(chosen_file.read_text()))
    (args.out / "scores.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if args.export:
        print("wrote", export(args.model, args.export, json.loads(chosen_file.read_text()), result))


if __name__ == "__main__":
    main()
