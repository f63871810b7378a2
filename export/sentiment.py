"""Sentiment export: a ``step`` graph (one token per stream) and a ``sequence`` graph (whole texts).

The step graph runs the course's cells (``training.cells``, proven equal to ``torch.nn``) with
weights copied from the trained ``nn.LSTM``/``GRU``/``RNN``. Every state tensor is batch-first,
``[batch, ...]``, so a server can keep streams in rows of one array per state:

- ``h`` (and ``c`` for an LSTM): ``[batch, layers, hidden]``;
- with ``--pool meanmax``: the running ``pool_sum`` and ``pool_max`` of the top layer's hidden
  states, ``[batch, hidden]``, and ``count``, ``[batch, 1]``, the number of tokens read.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract.words import MAX_TOKENS
from export.onnx_io import export_graph, write_manifest
from training.cells import Recurrent
from training.sentiment import Config, SentimentModel
from training.sentiment_data import LABELS, PAD, UNK, Vocabulary


class SentimentStep(nn.Module):
    def __init__(self, model: SentimentModel, cfg: Config) -> None:
        super().__init__()
        self.cell, self.pool = cfg.cell, cfg.pool
        self.embedding, self.classifier = model.embedding, model.classifier
        self.recurrent = Recurrent(cfg.cell, cfg.embed, cfg.hidden, cfg.layers)
        self.recurrent.load_torch(model.rnn)

    def forward(self, ids: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        layers = len(self.recurrent.layers)
        cell_state = state[:2] if self.cell == "lstm" else state[:1]
        x = self.embedding(ids)
        new_cell_state: list[tuple[torch.Tensor, ...]] = []
        for index, cell in enumerate(self.recurrent.layers):
            layer_state = cell(x, tuple(s[:, index] for s in cell_state))
            new_cell_state.append(layer_state)
            x = layer_state[0]
        stacked = tuple(torch.stack(parts, dim=1) for parts in zip(*new_cell_state, strict=True))
        assert stacked[0].shape[1] == layers
        features, pools = x, ()
        if self.pool == "meanmax":
            pool_sum, pool_max, count = state[len(cell_state) :]
            pool_sum, pool_max, count = pool_sum + x, torch.maximum(pool_max, x), count + 1
            features = torch.cat([x, pool_sum / count, pool_max], dim=-1)
            pools = (pool_sum, pool_max, count)
        probs = torch.softmax(self.classifier(features), dim=-1)
        return (probs, *stacked, *pools)

    def state_spec(self, hidden: int, layers: int) -> list[dict[str, Any]]:
        names = ["h", "c"] if self.cell == "lstm" else ["h"]
        spec = [{"input": n, "output": f"{n}_next", "shape": [layers, hidden], "initial": 0.0} for n in names]
        if self.pool == "meanmax":
            spec += [
                {"input": "pool_sum", "output": "pool_sum_next", "shape": [hidden], "initial": 0.0},
                # -3.4e38 (about float32's lowest) rather than -inf, which JSON cannot hold.
                {"input": "pool_max", "output": "pool_max_next", "shape": [hidden], "initial": -3.4e38},
                {"input": "count", "output": "count_next", "shape": [1], "initial": 0.0},
            ]
        return [{"graph": "step", "dtype": "float32", **s} for s in spec]


class SentimentSequence(nn.Module):
    def __init__(self, model: SentimentModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(ids, lengths), dim=-1)


def load_model(checkpoint: Path) -> tuple[SentimentModel, Config, Vocabulary]:
    payload = torch.load(checkpoint, weights_only=True)
    cfg = Config(**payload["config"])
    vocab = Vocabulary.load(checkpoint.parent / "vocab.json")
    model = SentimentModel(len(vocab), cfg)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), cfg, vocab


def export(checkpoint: Path, out_dir: Path, metrics: dict[str, Any]) -> Path:
    model, cfg, vocab = load_model(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint.parent / "vocab.json", out_dir / "vocab.json")
    step = SentimentStep(model, cfg).eval()
    spec = step.state_spec(cfg.hidden, cfg.layers)
    batch = 3  # not 1: a batch of one could be specialised away
    example_state = tuple(torch.full((batch, *s["shape"]), s["initial"]) for s in spec)
    state_names = [s["input"] for s in spec]
    graphs = {
        "step": export_graph(
            step, (torch.tensor([5, 6, 7]), example_state), out_dir / "step.onnx",
            ["ids", *state_names], ["probs", *[s["output"] for s in spec]],
            {name: {0: "batch"} for name in ["ids", *state_names]},
        ),
        "sequence": export_graph(
            SentimentSequence(model), (torch.tensor([[5, 6, 7], [8, 9, 0], [4, 0, 0]]), torch.tensor([3, 2, 1])),
            out_dir / "sequence.onnx", ["ids", "lengths"], ["probs"],
            {"ids": {0: "batch", 1: "tokens"}, "lengths": {0: "batch"}},
        ),
    }
    return write_manifest(out_dir, {
        "task": "sentiment",
        "description": f"{cfg.cell.upper()} sentiment classifier (Rotten Tomatoes), running probability per token",
        "graphs": graphs,
        "state": spec,
        "preprocessing": {
            "tokenizer": "regex-words",
            "vocabulary": "vocab.json",
            "lowercase": True,
            "pad_id": vocab.index[PAD],
            "unk_id": vocab.index[UNK],
            "max_tokens": MAX_TOKENS,
            "labels": list(LABELS),
        },
        "model": {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "embed": cfg.embed, "pool": cfg.pool,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "metrics": {k: metrics[k] for k in ("test_accuracy", "test_macro_f1", "dataset_sizes", "tfidf_baseline")
                    if k in metrics},
    })
