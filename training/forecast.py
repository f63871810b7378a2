"""Probabilistic monthly forecasting: one global recurrent quantile model for many monthly series.

    python -m training forecast [--smoothing holt-winters|none] [--cell lstm|gru] [--out runs/forecast] ...

It trains on ``--collections`` (aus_retail, us_employment, aus_livestock from fpp3) and is scored
on aus_retail's test horizon and on the frozen cross-dataset hold-out (``forecast_holdout.json``).
The last 24 months of every series are the test horizon, the 24 before them validation.
Each of ``--members`` models (seeds ``seed``, ``seed + 1``, …) trains on windows whose targets
end before the validation horizon and keeps its epoch with the best validation MASE; with
``--refit 1`` each is then retrained with the same seed for that many epochs on windows ending
before the test horizon. Their quantiles are averaged. The ensemble forecasts the test horizon
from the history before it, one step at a time, feeding its median back. Seasonal naive, ETS and AutoARIMA
(``statsforecast``) forecast the same horizon from the same history. See docs/forecast.md.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from contract.forecast import EPS, FLOOR, TRANSFORMS, decode, encode, prefix_length
from training.common import EarlyStopping, add_config_arguments, git_commit, plot_curves, set_seed, write_json
from training.forecast_data import (
    DATA_DIR,
    HORIZON,
    SEASON,
    TRAINING,
    Panel,
    gather_windows,
    holdout_panel,
    load_co2,
    load_panel,
    season_naive_mae,
    training_panel,
    training_windows,
)
from training.forecast_model import (
    MEDIAN,
    QUANTILES,
    RNN_MODULES,
    Ensemble,
    Forecaster,
    HoltWintersForecaster,
    StepModel,
    pinball_loss,
    rollout,
)

BASELINES = ("seasonal_naive", "ets", "autoarima")
SMOOTHING = ("holt-winters", "none")


@dataclass
class Config:
    smoothing: str = "none"
    bound: float = 0.5
    collections: str = ",".join(TRAINING)
    cell: str = "lstm"
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    context: int = 48
    transform: str = "log"
    lags: str = "12,13,24"
    skip_lag: int = 12
    epochs: int = 4
    batches_per_epoch: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    context_weight: float = 1.0
    mase_weighting: int = 1
    patience: int = 4
    seed: int = 0
    members: int = 3
    refit: int = 0
    series: int = 0
    threads: int = 1
    workers: int = 1  # members trained at once, each in its own process (same result: each member reseeds)
    baselines: str = ",".join(BASELINES)
    baseline_cache: str = "runs/forecast-baselines"  # statsforecast's forecasts, kept between runs
    fan_series: int = 4

    @property
    def lag_tuple(self) -> tuple[int, ...]:
        return tuple(int(lag) for lag in self.lags.split(",") if lag.strip())

    def member(self) -> Forecaster:
        if self.smoothing == "holt-winters":
            return HoltWintersForecaster(self.cell, self.hidden, self.layers, self.dropout, self.lag_tuple,
                                         bound=self.bound)
        return Forecaster(self.cell, self.hidden, self.layers, self.dropout, self.lag_tuple, self.skip_lag)

    def build(self) -> Ensemble:
        return Ensemble([self.member() for _ in range(self.members)])


# --- forecasting and metrics -------------------------------------------------------------------


@torch.no_grad()
def forecast_panel(
    model: StepModel, history: Panel, context: int, transform: str, horizon: int = HORIZON
) -> np.ndarray:
    """Quantile forecasts ``[N, horizon, Q]`` in the series' own units, from the end of every series.

    A series shorter than the configured context uses all it has (at least one value after
    the lag prefix), so any series works, seen in training or not.
    """
    model.eval()
    prefix = prefix_length(model.lags)
    lengths = np.array([len(v) for v in history.values])
    usable = np.minimum(context, lengths - prefix)
    if (usable < 1).any():
        raise ValueError(f"every series needs at least {prefix + 1} points, got {lengths.min()}")
    result = np.empty((len(lengths), horizon, len(QUANTILES)))
    for size in np.unique(usable):
        rows = np.flatnonzero(usable == size)
        pairs = np.stack([rows, lengths[rows]], axis=1)
        windows, months, scales = gather_windows(history, pairs, int(size), model.lags, horizon)
        scaled = torch.from_numpy(encode(windows, scales[:, None], transform)).float()
        _, quantiles = rollout(model, scaled, torch.from_numpy(months), int(size), horizon)
        result[rows] = decode(quantiles.double().numpy(), scales[:, None, None], transform)
    return result


def scores(history: Panel, actuals: np.ndarray, quantiles: np.ndarray) -> dict[str, float]:
    """Means over series of MASE (period 12) and sMAPE of the median, and the weighted quantile loss.

    The quantile loss of a series is ``mean_q 2 Σ_t pinball_q / Σ_t |y_t|`` over the levels
    ``QUANTILES`` (0.1 … 0.9), the usual CRPS proxy; at the median it is the relative MAE.
    """
    point = quantiles[..., MEDIAN]
    error = np.abs(actuals - point)
    denominators = np.array([season_naive_mae(v) for v in history.values])
    mase = error.mean(axis=1) / denominators
    smape = 200 * np.mean(error / np.maximum(np.abs(actuals) + np.abs(point), EPS), axis=1)
    levels = np.asarray(QUANTILES)
    diff = actuals[..., None] - quantiles
    pinball = np.maximum(levels * diff, (levels - 1) * diff)
    wql = (2 * pinball.sum(axis=1) / np.abs(actuals).sum(axis=1, keepdims=True)).mean(axis=1)
    coverage = np.mean((actuals >= quantiles[..., 0]) & (actuals <= quantiles[..., -1]))
    return {
        "mase": float(mase.mean()),
        "mase_median": float(np.median(mase)),
        "smape": float(smape.mean()),
        "quantile_loss": float(wql.mean()),
        "coverage_10_90": float(coverage),
    }


def baseline_forecasts(history: Panel, names: list[str], horizon: int = HORIZON) -> dict[str, np.ndarray]:
    """``statsforecast`` quantile forecasts ``[N, horizon, Q]`` for each requested baseline.

    The 10 … 90 % quantiles come from its central prediction intervals at 20 … 80 %.
    AutoARIMA uses the stepwise search with ``approximation=True``, as R's ``auto.arima``
    does by default for series longer than 150 points (the exact search took ~5 s per series).
    """
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS, SeasonalNaive

    models = {
        "seasonal_naive": SeasonalNaive(season_length=SEASON),
        "ets": AutoETS(season_length=SEASON),
        "autoarima": AutoARIMA(season_length=SEASON, approximation=True),
    }
    frame = pd.DataFrame(
        {
            "unique_id": np.repeat([f"{i:04d}" for i in range(len(history.values))], [len(v) for v in history.values]),
            "ds": np.concatenate([np.arange(len(v)) for v in history.values]),
            "y": np.concatenate(history.values),
        }
    )
    levels = sorted({round(abs(200 * q - 100)) for q in QUANTILES} - {0})
    results = {}
    for name in tqdm(names, desc="baselines", unit="model"):
        started = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = StatsForecast(models=[models[name]], freq=1, n_jobs=1).forecast(df=frame, h=horizon, level=levels)
        fitted = fitted.sort_values(["unique_id", "ds"])
        alias = str(models[name])
        columns = []
        for q in QUANTILES:
            width = round(abs(200 * q - 100))
            columns.append(alias if width == 0 else f"{alias}-{'lo' if q < 0.5 else 'hi'}-{width}")
        results[name] = fitted[columns].to_numpy().reshape(len(history.values), horizon, len(QUANTILES))
        tqdm.write(f"{name}: {time.time() - started:.1f}s")
    return results


def cached_baselines(history: Panel, names: list[str], cache: Path, horizon: int = HORIZON) -> dict[str, np.ndarray]:
    """``baseline_forecasts``, kept in ``cache`` (an ``.npz``, with the series ids it was computed for)
    and recomputed only for baselines that are missing or were computed for other series."""
    stored = dict(np.load(cache, allow_pickle=False)) if cache.exists() else {}
    same = "ids" in stored and list(stored["ids"]) == history.ids
    missing = [name for name in names if not same or name not in stored]
    if missing:
        stored = {k: v for k, v in stored.items() if same and k != "ids"}
        stored |= baseline_forecasts(history, missing, horizon)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, ids=np.array(history.ids), **stored)
    return {name: stored[name] for name in names}


# --- training ----------------------------------------------------------------------------------


def train_model(
    cfg: Config, panel: Panel, seed: int, refit_epochs: int = 0
) -> tuple[Forecaster, dict[str, list[float]], dict]:
    """Train one member.

    By default on windows ending before the validation horizon, keeping the epoch with the
    best validation MASE. With ``refit_epochs`` the same seed and schedule train for exactly
    that many epochs on windows ending before the test horizon (validation months included),
    with no validation: the refit the test forecast uses.
    """
    set_seed(seed)
    model = cfg.member()
    lags, prefix = cfg.lag_tuple, prefix_length(cfg.lag_tuple)
    train_panel = panel.cut(HORIZON if refit_epochs else 2 * HORIZON)
    pairs = training_windows(train_panel, cfg.context, lags)
    windows, months, scales = gather_windows(train_panel, pairs, cfg.context, lags, HORIZON)
    scaled = torch.from_numpy(encode(windows, scales[:, None], cfg.transform)).float()
    months0 = torch.from_numpy(months)
    origin = prefix + cfg.context
    # MASE divides each series' error by its in-sample seasonal naive MAE; weighting each window's
    # loss by the inverse of that MAE on its own observed part trains for the metric we report.
    observed = scaled[:, :origin]
    naive_mae = (observed[:, SEASON:] - observed[:, :-SEASON]).abs().mean(dim=1).clamp_min(1e-2)
    weights = 1 / naive_mae if cfg.mase_weighting else torch.ones(len(scaled))
    validation_actuals = np.stack([v[-2 * HORIZON : -HORIZON] for v in panel.values])

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * cfg.batches_per_epoch)
    stopper = EarlyStopping(cfg.patience, higher_is_better=False)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"train loss": []}
    if not refit_epochs:
        history |= {"validation MASE": [], "validation quantile loss": []}
    best_state, epoch_seconds = None, []
    label = f"forecast {cfg.cell} seed {seed}" + (" refit" if refit_epochs else "")
    epochs = tqdm(range(refit_epochs or cfg.epochs), desc=label, unit="epoch")
    for epoch in epochs:
        model.train()
        epoch_start, total = time.time(), 0.0
        bar = tqdm(range(cfg.batches_per_epoch), desc=f"epoch {epoch + 1}", leave=False)
        for batch in bar:
            index = torch.randint(len(scaled), (cfg.batch_size,), generator=generator)
            window = scaled[index]
            context_q, forecast_q = rollout(model, window, months0[index], cfg.context, HORIZON)
            weight = weights[index]
            loss = pinball_loss(forecast_q, window[:, origin:], weight) + cfg.context_weight * pinball_loss(
                context_q, window[:, prefix + 1 : origin], weight
            )
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (batch + 1):.4f}")
        epoch_seconds.append(time.time() - epoch_start)
        history["train loss"].append(total / cfg.batches_per_epoch)
        if refit_epochs:
            epochs.set_postfix(loss=f"{history['train loss'][-1]:.4f}")
            continue
        validation = scores(
            train_panel, validation_actuals, forecast_panel(model, train_panel, cfg.context, cfg.transform)
        )
        history["validation MASE"].append(validation["mase"])
        history["validation quantile loss"].append(validation["quantile_loss"])
        if stopper.improved(validation["mase"], epoch):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        epochs.set_postfix(
            loss=f"{history['train loss'][-1]:.4f}", val_mase=f"{validation['mase']:.4f}", best=f"{stopper.best:.4f}"
        )
        if stopper.should_stop:
            break
    summary = {
        "epochs_run": len(history["train loss"]),
        "seconds_per_epoch": float(np.median(epoch_seconds)),
        "training_windows": len(pairs),
    }
    if not refit_epochs:
        assert best_state is not None
        model.load_state_dict(best_state)
        summary |= {"validation_mase": stopper.best, "best_epoch": stopper.best_epoch + 1}
    return model.eval(), history, summary


def plot_fan_chart(
    panel: Panel, quantiles: np.ndarray, rows: list[int], path: Path, reference: np.ndarray | None = None
) -> None:
    """History (last 6 years), the test actuals, the median and the 10–90 % band for a few series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.8 * len(rows)), squeeze=False)
    for axis, row in zip(axes[:, 0], rows, strict=True):
        values = panel.values[row]
        time_axis = np.arange(len(values))
        shown = slice(max(len(values) - HORIZON - 72, 0), len(values))
        future = time_axis[-HORIZON:]
        axis.plot(time_axis[shown], values[shown], color="black", linewidth=1, label="actual")
        axis.fill_between(future, quantiles[row, :, 0], quantiles[row, :, -1], alpha=0.3, label="model 10–90 %")
        axis.plot(future, quantiles[row, :, MEDIAN], color="C0", label="model median")
        if reference is not None:
            axis.plot(future, reference[row, :, MEDIAN], color="C1", linestyle="--", linewidth=1, label="ETS")
        axis.axvline(len(values) - HORIZON - 0.5, color="grey", linewidth=0.8)
        axis.set_title(f"{panel.ids[row]}  {panel.names[row]}", fontsize=9)
        axis.set_xlabel("month index")
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train_member(cfg: Config, panel: Panel, seed: int) -> tuple[Forecaster, dict[str, list[float]], dict]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return train_model(cfg, panel, seed)


def train_members(cfg: Config, panel: Panel) -> list[tuple[Forecaster, dict[str, list[float]], dict]]:
    """``train_model`` for seeds ``seed … seed + members - 1``, ``workers`` processes at a time."""
    seeds = [cfg.seed + k for k in range(cfg.members)]
    if cfg.workers <= 1:
        return [train_model(cfg, panel, seed) for seed in seeds]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(cfg.workers, cfg.members)) as pool:
        return list(pool.map(_train_member, [cfg] * len(seeds), [panel] * len(seeds), seeds))


def evaluate_panel(
    model: StepModel, cfg: Config, panel: Panel, name: str, extra: dict[str, StepModel]
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Scores on the last ``HORIZON`` months of every series of ``panel``: the model, ``extra`` models
    and the baselines (cached under ``cfg.baseline_cache``), forecast from the history before them."""
    history = panel.cut(HORIZON)
    actuals = np.stack([v[-HORIZON:] for v in panel.values])
    forecasts = {"model": forecast_panel(model, history, cfg.context, cfg.transform)}
    forecasts |= {key: forecast_panel(m, history, cfg.context, cfg.transform) for key, m in extra.items()}
    names = [b for b in cfg.baselines.split(",") if b]
    forecasts |= cached_baselines(history, names, Path(cfg.baseline_cache) / f"{name}_{len(panel.ids)}.npz")
    return {key: scores(history, actuals, q) for key, q in forecasts.items()}, forecasts


def run(cfg: Config, out: Path, data_dir: Path = DATA_DIR, trained: list | None = None) -> dict:
    """Train the members (or take ``trained``, ``train_members``' result from separate runs of the same
    ``cfg``), forecast the test sets, run the baselines; write model.pt, metrics.json and PNGs."""
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    panel = training_panel(tuple(c for c in cfg.collections.split(",") if c), data_dir)
    if cfg.series:
        panel = panel.subset(np.linspace(0, len(panel.ids) - 1, cfg.series).round().astype(int))
    out.mkdir(parents=True, exist_ok=True)
    trained = trained or train_members(cfg, panel)
    selected = Ensemble([member for member, _, _ in trained]).eval()
    validation_history = panel.cut(2 * HORIZON)
    validation = scores(
        validation_history,
        np.stack([v[-2 * HORIZON : -HORIZON] for v in panel.values]),
        forecast_panel(selected, validation_history, cfg.context, cfg.transform),
    )
    refits = []
    if cfg.refit:
        refits = [train_model(cfg, panel, cfg.seed + k, s["best_epoch"]) for k, (_, _, s) in enumerate(trained)]
    model = Ensemble([member for member, _, _ in refits]).eval() if refits else selected
    # reported for transparency: the members as selected, before the refit
    extra = {"model_without_refit": selected} if refits else {}
    retail = load_panel(data_dir / "aus_retail.csv")
    test, test_forecasts = evaluate_panel(model, cfg, retail, "aus_retail_test", extra)
    holdout, _ = evaluate_panel(model, cfg, holdout_panel(data_dir), "holdout_test", extra)
    co2, _ = evaluate_panel(model, cfg, load_co2(), "co2_test", extra)

    torch.save(
        {
            "config": asdict(cfg),
            "state_dict": model.state_dict(),
            "quantiles": QUANTILES,
            "scaling": "scale = mean(|last `context` values before the origin|) + EPS; see contract/forecast.py",
            "eps": EPS,
            "floor": FLOOR,
        },
        out / "model.pt",
    )
    for k, (_, history, _) in enumerate(trained):
        plot_curves(history, out / f"curves_member{k}.png", f"forecast, {cfg.cell}, member {k} (seed {cfg.seed + k})")
    rows = np.linspace(0, len(retail.ids) - 1, min(cfg.fan_series, len(retail.ids))).round().astype(int).tolist()
    plot_fan_chart(retail, test_forecasts["model"], rows, out / "fan_chart.png", test_forecasts.get("ets"))
    metrics = {
        "task": "forecast",
        "test": test,
        "holdout": holdout,
        "co2": co2,
        "validation": validation,
        "members": [{**summary, "seed": cfg.seed + k, "history": h} for k, (_, h, summary) in enumerate(trained)],
        "refits": [{**summary, "seed": cfg.seed + k, "history": h} for k, (_, h, summary) in enumerate(refits)],
        "parameters": sum(p.numel() for p in model.parameters()),
        "dataset_sizes": {
            "series": len(panel.ids),
            "points": int(sum(len(v) for v in panel.values)),
            "test_series": len(retail.ids),
            "test_points": HORIZON * len(retail.ids),
            "validation_points": HORIZON * len(panel.ids),
            "holdout_series": len(holdout_panel(data_dir).ids),
        },
        "horizon": HORIZON,
        "quantiles": list(QUANTILES),
        "seed": cfg.seed,
        "wall_seconds": time.time() - started,
        "config": asdict(cfg),
        "git_commit": git_commit(),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(prog="python -m training forecast", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, Config(), {"cell": sorted(RNN_MODULES), "transform": TRANSFORMS,
                                            "smoothing": SMOOTHING})
    parser.add_argument("--out", type=Path, default=Path("runs/forecast"))
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    cfg = Config(**args)
    unknown = set(cfg.baselines.split(",")) - set(BASELINES) - {""}
    if unknown:
        parser.error(f"--baselines: unknown {sorted(unknown)}; choose from {','.join(BASELINES)}")
    return cfg, out


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    metrics = run(cfg, out)
    for split in ("test", "holdout", "co2"):
        print(f"{split:20}{'MASE':>8}{'median':>8}{'sMAPE':>8}{'QL':>8}{'cover':>8}")
        for name, row in metrics[split].items():
            print(f"{name:20}{row['mase']:8.3f}{row['mase_median']:8.3f}{row['smape']:8.2f}"
                  f"{row['quantile_loss']:8.4f}{row['coverage_10_90']:8.3f}")
    print(f"-> {out}")
