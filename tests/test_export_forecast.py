"""Forecast export: the ONNX step rollout equals PyTorch's forecast, and batching changes nothing."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.repository import load_model
from evaluate import forecast_quantiles
from export.onnx_io import describe_graph
from training.forecast import Config, forecast_panel
from training.forecast_data import HORIZON, Panel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["holt-winters", "none"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A tiny two-member ensemble with random weights, exported in a fresh process as `make models` does:
    the Holt–Winters hybrid (v2) and the plain LSTM (v1)."""
    tmp_path = tmp_path_factory.mktemp("forecast")
    torch.manual_seed(0)
    cfg = Config(smoothing=request.param, hidden=8, layers=2, members=2, dropout=0.0, context=30)
    model = cfg.build().eval()
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": asdict(cfg), "state_dict": model.state_dict()}, run / "model.pt")
    (run / "metrics.json").write_text(json.dumps({"test": {"model": {"mase": 1.0}}}))
    subprocess.run([sys.executable, "-m", "export", "forecast", "--checkpoint", str(run / "model.pt"),
                    "--out", str(tmp_path / "models")], cwd=ROOT, check=True, capture_output=True)
    return model, cfg, load_model(tmp_path / "models" / "forecast" / "1")


def synthetic_panel(count: int) -> Panel:
    """Seasonal positive series of 24 to 80 points (shorter and longer than lag prefix + context), any start month."""
    rng = np.random.default_rng(0)
    values = []
    for length in rng.integers(24, 81, size=count):
        t = np.arange(length)
        level = rng.uniform(1, 100)
        values.append(level * (1 + 0.2 * np.sin(2 * np.pi * t / 12 + rng.uniform(0, 6)) + 0.05 * rng.random(length)))
    return Panel([f"s{i}" for i in range(count)], [""] * count, values, rng.integers(0, 12, size=count))


def test_step_rollout_matches_pytorch_for_every_batch_size(exported: tuple) -> None:
    model, cfg, shipped = exported
    step = describe_graph(shipped.path / "step.onnx")  # the saved graph, not the manifest's copy
    assert all(tensor["shape"][0] == "batch" for tensor in step["inputs"] + step["outputs"])
    rnn = [(cfg.members * cfg.layers, cfg.hidden)] * 2
    holt_winters = [(cfg.members, 1), (cfg.members, 12), (cfg.members, 1)] if cfg.smoothing == "holt-winters" else []
    assert [s.shape for s in shipped.manifest.state_of("step")] == rnn + holt_winters

    panel = synthetic_panel(17)
    expected = forecast_panel(model, panel, cfg.context, cfg.transform)

    def onnx(rows: range) -> np.ndarray:
        return forecast_quantiles(shipped, panel.values[rows.start : rows.stop], panel.start_months[rows], HORIZON)

    solo = np.concatenate([onnx(range(i, i + 1)) for i in range(17)])
    # decode is scale * exp(q): the log of the ratio is the difference in model units.
    np.testing.assert_allclose(np.log(solo / expected), 0, atol=1e-4)
    for size in (3, 17):
        batched = np.concatenate([onnx(range(start, min(start + size, 17))) for start in range(0, 17, size)])
        np.testing.assert_allclose(np.log(batched / solo), 0, atol=1e-6)
