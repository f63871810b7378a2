"""Forecast export: the ensemble's one-month ``step`` graph and the numpy-reproducible preprocessing.

``step``: ``value [batch, 1]`` (``z[t-1]``), ``features [batch, 15]`` (one-hot month of the
target month ``t``, January first, then ``z[t-12]``, ``z[t-13]``, ``z[t-24]``) and the state
``h``, ``c`` (and for the Holt–Winters hybrid ``level``, ``season``, ``count``) -> ``quantiles
[batch, 9]`` (the 0.1 … 0.9 quantiles of ``z[t]``, in model units: ``y = scale * exp(q)``) and
``h_next``, ``c_next`` (``level_next``, ``season_next``, ``count_next``). The state is batch-first,
``[batch, members * layers, hidden]`` (``[batch, members, 1]``, ``[batch, members, 12]``,
``[batch, members, 1]``); the wrapper transposes to and from the ``[members * layers, batch,
hidden]`` that ``torch.nn.LSTM`` uses. Scaling, features and the rollout stay
outside the graph and are written into the manifest (see docs/forecast.md).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract.forecast import EPS, FLOOR, prefix_length
from export.onnx_io import export_graph, write_manifest
from training.cells import Recurrent
from training.forecast import BASELINES, Config
from training.forecast_data import HORIZON, SEASON, feature_size
from training.forecast_model import QUANTILES, Ensemble

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
METRICS = ("mase", "smape", "quantile_loss", "mase_median", "coverage_10_90")


class CellRNN(nn.Module):
    """``torch.nn.LSTM``/``GRU``'s calling convention (batch-first) over the course cells.

    ``torch.onnx.export`` (dynamo) fails on ``nn.LSTM`` here, so the step graph runs
    ``training.cells.Recurrent`` (tested equal to ``torch.nn``) with the trained weights copied in.
    """

    def __init__(self, rnn: nn.LSTM | nn.GRU, cell: str) -> None:
        super().__init__()
        self.lstm = cell == "lstm"
        self.num_layers, self.hidden_size = rnn.num_layers, rnn.hidden_size  # read by Forecaster and Ensemble
        self.recurrent = Recurrent(cell, rnn.input_size, rnn.hidden_size, rnn.num_layers)
        self.recurrent.load_torch(rnn)

    def forward(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        outputs, new_state = self.recurrent(x, state if self.lstm else (state,))
        return outputs, new_state if self.lstm else new_state[0]


class ForecastStep(nn.Module):
    """``model.step`` with batch-first state tensors, on a copy of ``model`` whose members run ``CellRNN``."""

    def __init__(self, model: Ensemble) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        for member in self.model.members:
            member.rnn = CellRNN(member.rnn, member.cell)

    def forward(
        self, value: torch.Tensor, features: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        quantiles, new_state = self.model.step(value, features, tuple(s.transpose(0, 1) for s in state))
        return (quantiles, *(s.transpose(0, 1) for s in new_state))


def load_model(checkpoint: Path) -> tuple[Ensemble, Config]:
    payload = torch.load(checkpoint, weights_only=True)
    cfg = Config(**payload["config"])
    model = cfg.build()
    model.load_state_dict(payload["state_dict"])
    return model.eval(), cfg


def preprocessing(cfg: Config) -> dict[str, Any]:
    """The rule the server and the reference runtime apply with numpy (``contract/forecast.py``)."""
    lags = list(cfg.lag_tuple)
    return {
        "scaling": {
            "context": cfg.context,
            "eps": EPS,
            "transform": cfg.transform,
            "floor": FLOOR,
            "rule": "scale = mean(|y|) over the last min(context, n - min_history + 1) observations + eps; "
                    + ("z = log(max(y / scale, floor)); a model quantile q means scale * exp(q)"
                       if cfg.transform == "log" else "z = y / scale; a model quantile q means scale * q"),
        },
        "season": SEASON,
        "lags": lags,
        "value": "z[t-1]",
        "features": [f"month={m}" for m in MONTHS] + [f"z[t-{lag}]" for lag in lags],
        "quantiles": list(QUANTILES),
        "min_history": prefix_length(cfg.lag_tuple) + 1,
        "trained_horizon": HORIZON,
        "rollout": "read the last min_history - 1 + min(context, n - min_history + 1) observations "
                   "teacher-forced, from the first target whose lags exist; then feed the median back "
                   "as z[t-1] and as the lags past the last observation",
    }


def export(checkpoint: Path, out_dir: Path, metrics: dict[str, Any]) -> Path:
    model, cfg = load_model(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = 3  # not 1: a batch of one could be specialised away
    state = tuple(s.transpose(0, 1).contiguous() for s in model.initial_state(batch))
    names = list(model.state_names)
    features = torch.zeros(batch, feature_size(cfg.lag_tuple))
    graph = export_graph(
        ForecastStep(model), (torch.zeros(batch, 1), features, state), out_dir / "step.onnx",
        ["value", "features", *names], ["quantiles", *[f"{n}_next" for n in names]],
        {name: {0: "batch"} for name in ["value", "features", *names]},
    )
    test, holdout = metrics.get("test", {}), metrics.get("holdout", {})
    return write_manifest(out_dir, {
        "task": "forecast",
        "description": f"{cfg.members}-member {cfg.cell.upper()} quantile forecaster"
                       + (" with Holt-Winters level and seasonality (ES-RNN)" if cfg.smoothing != "none" else "")
                       + f" ({cfg.collections.replace(',', ', ')}; monthly)",
        "graphs": {"step": graph},
        "state": [{"graph": "step", "input": n, "output": f"{n}_next", "shape": list(s.shape[1:]),
                   "dtype": "float32", "initial": 0.0} for n, s in zip(names, state, strict=True)],
        "preprocessing": preprocessing(cfg),
        "model": {"smoothing": cfg.smoothing, "cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden,
                  "members": cfg.members,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "metrics": {
            **{f"test_{k}": v for k, v in test.get("model", {}).items() if k in METRICS},
            **{f"holdout_{k}": v for k, v in holdout.get("model", {}).items() if k in METRICS},
            "baselines": {name: {**{f"test_{k}": v for k, v in scores.items() if k in METRICS},
                                 **{f"holdout_{k}": v for k, v in holdout.get(name, {}).items() if k in METRICS}}
                          for name, scores in test.items() if name in BASELINES},
            **({"dataset_sizes": metrics["dataset_sizes"]} if "dataset_sizes" in metrics else {}),
        },
    })
