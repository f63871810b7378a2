"""Version 3's constants: the Theta combination weight and the band calibration, chosen on validation only.

    python -m training.forecast_v3 [--model models/forecast/2] [--out runs/forecast-v3] [--score 0|1]

The step graph is version 2's. On the validation horizon of the training collections (the 24 months
before each series' test horizon, forecast from the history before them: what the trainer's
validation reads), it scores the v2 quantiles adjusted by ``contract.forecast.adjust`` over a grid:

1. ``window`` and ``weight`` (combination): the lowest mean validation MASE;
2. ``width``, ``floor``, ``growth`` (calibration, over the same window): among the candidates whose
   validation 10–90 % coverage is within 0.78–0.82, the lowest quantile loss (else the closest coverage).

Nothing here reads the test horizons. ``--score 1`` then scores the chosen rules once on aus_retail's
test horizon and on the hold-out (with Theta alone for reference) and writes ``scores.json``.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/forecast/2"))
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("runs/forecast-v3"))
    parser.add_argument("--score", type=int, default=0)
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


if __name__ == "__main__":
    main()
