"""Forecast: the real panel, the scaling rule, the step function, quantiles, training, baselines and the CLI."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.forecast import EPS, FLOOR, decode, encode, fit_scale, prefix_length
from training import forecast
from training.forecast import Config, baseline_forecasts, forecast_panel, scores
from training.forecast_data import (
    HOLDOUT_FILE,
    HORIZON,
    TRAINING,
    Panel,
    gather_windows,
    holdout_panel,
    load_panel,
    select_holdout,
    training_panel,
    training_windows,
)
from training.forecast_model import (
    MEDIAN,
    QUANTILES,
    Ensemble,
    Forecaster,
    HoltWintersForecaster,
    StepModel,
    ordered_quantiles,
    pinball_loss,
    rollout,
    sequence_inputs,
    step_inputs,
)

LAGS = (12,)


@pytest.fixture(scope="module")
def panel(data_dir: Path) -> Panel:
    return load_panel(data_dir / "forecast" / "aus_retail.csv")


def small_model(cell: str, seed: int = 0) -> StepModel:
    """A small Forecaster of ``cell``; ``"holt-winters"``: the ES-RNN hybrid (an LSTM); ``"ensemble"``: two
    different LSTMs; ``"holt-winters ensemble"``: two different hybrids."""
    if cell.endswith("ensemble"):
        member = cell.removesuffix("ensemble").strip() or "lstm"
        return Ensemble([small_model(member, 1), small_model(member, 2)]).eval()
    torch.manual_seed(seed)
    if cell == "holt-winters":
        model = HoltWintersForecaster("lstm", hidden=16, layers=2, dropout=0.0, lags=LAGS)
        with torch.no_grad():  # smoothing weights away from their initial value, different per member
            model.smoothing.copy_(torch.randn(2))
        return model.eval()
    return Forecaster(cell, hidden=16, layers=2, dropout=0.0, lags=LAGS, skip_lag=12).eval()


def windows(panel: Panel, rows: list[int], context: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    pairs = np.array([[row, len(panel.values[row]) - HORIZON] for row in rows])
    raw, months, scales = gather_windows(panel, pairs, context, LAGS, HORIZON)
    return torch.from_numpy(encode(raw, scales[:, None], "log")).float(), torch.from_numpy(months), scales


def test_panel_is_the_real_aus_retail(panel: Panel) -> None:
    assert len(panel.ids) == 150  # 152 series; the two with 32 points are too short for two horizons
    lengths = sorted({len(v) for v in panel.values})
    assert lengths == [140, 369, 441]
    assert all(np.isfinite(v).all() and (v > 0).all() for v in panel.values)
    assert set(panel.start_months.tolist()) == {3, 6}  # April 1982 / 1988, July 1998


def test_training_panel_adds_collections_after_aus_retail(panel: Panel) -> None:
    both = training_panel(TRAINING[:2])
    assert both.ids[: len(panel.ids)] == panel.ids
    extra = both.ids[len(panel.ids) :]
    assert extra and all(i.startswith("us_employment/Employed/") for i in extra)
    assert all(72 + 24 <= len(v) <= 360 and (v > 0).all() for v in both.values[len(panel.ids) :])
    with pytest.raises(ValueError, match="aus_retail first"):
        training_panel(("us_employment",))


def test_holdout_is_the_frozen_rule_and_shares_no_source_with_training() -> None:
    frozen = json.loads(HOLDOUT_FILE.read_text())["series"]
    assert select_holdout() == frozen and len(frozen) == 120  # the rule, rerun, gives the frozen list
    assert not {series_id.split("/")[0] for series_id in frozen} & set(TRAINING)
    holdout = holdout_panel()
    assert holdout.ids == frozen
    assert all(len(v) >= HORIZON + 48 and (v > 0).all() for v in holdout.values)


@pytest.mark.parametrize("count", [0.0, 3.0, 100.0])
def test_holt_winters_states_follow_their_equations(count: float) -> None:
    """One step by hand: the level and the month's seasonal term move toward the observed value; in the
    first year the level is the running mean and the term the value's deviation from it."""
    model = small_model("holt-winters")
    alpha, gamma = torch.sigmoid(model.smoothing).tolist()
    level, season = torch.tensor([[[0.2]]]), torch.linspace(-0.5, 0.6, 12).reshape(1, 1, 12)
    state = (*model.initial_state(1)[:2], level, season, torch.tensor([[[count]]]))
    month = 4  # the target is May, so the value read is April's (index 3)
    features = torch.cat([torch.nn.functional.one_hot(torch.tensor([month]), 12).float(), torch.zeros(1, 1)], -1)
    with torch.no_grad():
        quantiles, new = model.step(torch.tensor([[1.0]]), features, state)
    april = season[0, 0, 3].item()
    a, g = max(alpha, 1 / (count + 1)), (1.0 if count < 12 else gamma)
    expected_level = 0.2 + a * (1.0 - april - 0.2)
    expected_april = april + g * (1.0 - expected_level - april)
    assert new[2].item() == pytest.approx(expected_level, abs=1e-6)
    assert new[3][0, 0, 3].item() == pytest.approx(expected_april, abs=1e-6)
    assert new[4].item() == count + 1
    others = [m for m in range(12) if m != 3]
    torch.testing.assert_close(new[3][0, 0, others], season[0, 0, others])
    # the median is the level plus May's seasonal term plus a bounded offset
    offset = quantiles[0, MEDIAN].item() - expected_level - season[0, 0, month].item()
    assert abs(offset) <= model.bound


@pytest.mark.parametrize("transform", ["log", "identity"])
def test_scaler_round_trips_and_follows_the_documented_rule(panel: Panel, transform: str) -> None:
    series = panel.values[7]
    scale = fit_scale(series, 48)
    assert scale == pytest.approx(np.abs(series[-48:]).mean() + EPS)
    expected = np.log(series / scale) if transform == "log" else series / scale
    np.testing.assert_allclose(encode(series, scale, transform), expected)
    np.testing.assert_allclose(decode(encode(series, scale, transform), scale, transform), series)
    if transform == "log":  # zeros and negatives are clipped to the floor, never NaN
        assert encode(np.array([0.0, -5.0]), scale, "log").tolist() == [np.log(FLOOR)] * 2
    # The scale lives outside the model: a series ten times larger gets forecasts ten times larger.
    model = small_model("lstm")
    part = panel.subset([3, 50]).cut(HORIZON)
    bigger = Panel(part.ids, part.names, [10 * v for v in part.values], part.start_months)
    expected = 10 * forecast_panel(model, part, 48, transform)
    np.testing.assert_allclose(
        forecast_panel(model, bigger, 48, transform), expected, rtol=1e-4, atol=1e-5 * expected.max()
    )


@pytest.mark.parametrize("cell", ["lstm", "gru", "ensemble", "holt-winters", "holt-winters ensemble"])
def test_step_by_step_equals_teacher_forced_pass(panel: Panel, cell: str) -> None:
    model, context = small_model(cell), 36
    scaled, months, _ = windows(panel, [0, 42, 149], context)
    prefix = prefix_length(LAGS)
    origin = prefix + context
    columns = list(scaled.unbind(1))
    state, stepped = model.initial_state(3), []
    with torch.no_grad():
        for target in range(prefix + 1, origin):
            quantiles, state = model.step(*step_inputs(columns, months, target, LAGS), state)
            stepped.append(quantiles)
        batched, batched_state = model(*sequence_inputs(scaled, months, range(prefix + 1, origin), LAGS))
        context_q, forecast_q = rollout(model, scaled, months, context, HORIZON)
    torch.testing.assert_close(torch.stack(stepped, 1), batched)
    torch.testing.assert_close(context_q, batched)
    for mine, theirs in zip(state, batched_state, strict=True):
        torch.testing.assert_close(mine, theirs)
    # The fed-back forecast is the teacher-forced pass over a series continued by its own medians.
    continued = scaled.clone()
    continued[:, origin:] = forecast_q[..., MEDIAN]
    with torch.no_grad():
        again, _ = model(*sequence_inputs(continued, months, range(prefix + 1, origin + HORIZON), LAGS))
    torch.testing.assert_close(again[:, context - 1 :], forecast_q)


def test_quantiles_are_ordered(panel: Panel) -> None:
    torch.manual_seed(1)
    raw = 20 * torch.randn(500, len(QUANTILES))
    assert (ordered_quantiles(raw).diff(dim=-1) >= 0).all()
    quantiles = forecast_panel(small_model("gru"), panel.subset([5, 90]).cut(HORIZON), 48, "log")
    assert quantiles.shape == (2, HORIZON, len(QUANTILES))
    assert (np.diff(quantiles, axis=-1) >= 0).all()


def test_an_unseen_short_series_works() -> None:
    months = np.arange(30)
    series = 100 + 20 * np.sin(2 * np.pi * months / 12) + months
    unseen = Panel(["new"], ["a series from nowhere"], [series], np.array([0]))
    quantiles = forecast_panel(small_model("lstm"), unseen, context=48, transform="log", horizon=6)
    assert quantiles.shape == (1, 6, len(QUANTILES)) and np.isfinite(quantiles).all()
    with pytest.raises(ValueError, match="at least 12 points"):
        forecast_panel(small_model("lstm"), Panel(["x"], ["x"], [series[:11]], np.array([0])), 48, "log")


def test_scores_of_a_perfect_and_a_seasonal_naive_forecast(panel: Panel) -> None:
    history = panel.subset([10, 20]).cut(HORIZON)
    actuals = np.stack([v[-HORIZON:] for v in panel.subset([10, 20]).values])
    perfect = scores(history, actuals, np.repeat(actuals[..., None], len(QUANTILES), axis=-1))
    assert perfect["mase"] == 0 and perfect["smape"] == 0 and perfect["quantile_loss"] == 0
    naive = np.stack([np.tile(v[-12:], 2) for v in history.values])
    worse = scores(history, actuals, np.repeat(naive[..., None], len(QUANTILES), axis=-1))
    assert 0.3 < worse["mase"] < 5 and 0 < worse["smape"] < 50


def test_training_on_a_small_subset_reduces_the_loss(panel: Panel) -> None:
    torch.manual_seed(0)
    subset, context = panel.subset(list(range(0, 150, 15))), 24
    pairs = training_windows(subset, context, LAGS)
    raw, months, scales = gather_windows(subset, pairs[:: max(len(pairs) // 256, 1)], context, LAGS, HORIZON)
    scaled, months0 = torch.from_numpy(encode(raw, scales[:, None], "log")).float(), torch.from_numpy(months)
    origin = prefix_length(LAGS) + context
    model = Forecaster("lstm", hidden=16, layers=1, dropout=0.0, lags=LAGS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        _, forecast_q = rollout(model, scaled, months0, context, HORIZON)
        return pinball_loss(forecast_q, scaled[:, origin:])

    with torch.no_grad():
        before = loss().item()
    for _ in range(25):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.6 * before


def test_baselines_run(panel: Panel) -> None:
    history = Panel(["a", "b"], ["a", "b"], [v[-120:] for v in panel.subset([0, 77]).values], np.array([0, 0]))
    result = baseline_forecasts(history, ["seasonal_naive", "ets", "autoarima"], horizon=6)
    for quantiles in result.values():
        assert quantiles.shape == (2, 6, len(QUANTILES)) and np.isfinite(quantiles).all()
        assert (np.diff(quantiles, axis=-1) >= -1e-9).all()
    np.testing.assert_allclose(result["seasonal_naive"][..., MEDIAN], np.stack([v[-12:-6] for v in history.values]))


def test_members_trained_in_parallel_equal_those_trained_one_after_the_other() -> None:
    cfg = Config(series=6, epochs=1, members=2, batches_per_epoch=2, batch_size=8, hidden=4, layers=1, context=24)
    panel = training_panel(("aus_retail",)).subset(list(range(0, 150, 30)))
    alone = forecast.train_members(cfg, panel)
    parallel = forecast.train_members(replace(cfg, workers=2), panel)
    for (first, _, _), (second, _, _) in zip(alone, parallel, strict=True):
        for name, tensor in first.state_dict().items():
            torch.testing.assert_close(second.state_dict()[name], tensor, rtol=0, atol=0)
    assert not torch.equal(alone[0][0].head.weight, alone[1][0].head.weight)  # the seeds differ


def test_cli_trains_evaluates_and_saves_a_rebuildable_model(tmp_path: Path, data_dir: Path) -> None:
    options = {
        "series": 6,
        "epochs": 2,
        "members": 2,
        "batches-per-epoch": 3,
        "batch-size": 16,
        "hidden": 8,
        "layers": 1,
    }
    options |= {"context": 24, "baselines": "seasonal_naive", "fan-series": 2, "cell": "gru", "refit": 1,
                "baseline-cache": str(tmp_path / "baselines"), "workers": 2}
    args = [part for name, value in options.items() for part in (f"--{name}", str(value))]
    forecast.main([*args, "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["test"]) == set(metrics["holdout"]) == {"model", "model_without_refit", "seasonal_naive"}
    assert metrics["dataset_sizes"]["series"] == 6 and [m["epochs_run"] for m in metrics["members"]] == [2, 2]
    assert [m["epochs_run"] for m in metrics["refits"]] == [m["best_epoch"] for m in metrics["members"]]
    assert metrics["refits"][0]["training_windows"] > metrics["members"][0]["training_windows"]
    assert all(np.isfinite(row["mase"]) for row in metrics["test"].values())
    assert (tmp_path / "curves_member1.png").stat().st_size > 0 and (tmp_path / "fan_chart.png").stat().st_size > 0
    checkpoint = torch.load(tmp_path / "model.pt")
    cfg = Config(**checkpoint["config"])
    model = cfg.build()
    model.load_state_dict(checkpoint["state_dict"])
    part = load_panel(data_dir / "forecast" / "aus_retail.csv").subset([0]).cut(HORIZON)
    assert np.isfinite(forecast_panel(model, part, cfg.context, cfg.transform)).all()
