"""A shipped ``step``-graph sentiment version (version 1) back as a training checkpoint, to export it again.

    python -m training.sentiment_init models/sentiment/1 --out runs/sentiment-v1
    python -m export sentiment --checkpoint runs/sentiment-v1/model.pt --out models --version 2

Version 1's ``step.onnx`` holds every weight: the embedding and classifier under their PyTorch
names and each layer's cell as the course's cells store it (``training.cells``: one matrix over
``[h, x]``, gates reordered, the two biases summed). Here each is mapped back to ``torch.nn``'s
layout, the summed bias as ``bias_ih`` with a zero ``bias_hh``, so the exported model is the same
function (``tests/test_sentiment_init.py`` checks it against version 1 token by token).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from training.common import onnx_initializers, write_json
from training.sentiment import Config, SentimentModel

LSTM_ORDER = [1, 0, 3, 2]  # the course's f, i, o, c~ <-> torch's i, f, g, o (the permutation is its own inverse)


def _lstm(weights: dict[str, np.ndarray], prefix: str, hidden: int) -> tuple[np.ndarray, ...]:
    def reorder(t: np.ndarray) -> np.ndarray:
        return np.concatenate([np.split(t, 4)[k] for k in LSTM_ORDER])

    weight, bias = weights[f"{prefix}.linear.weight"], weights[f"{prefix}.linear.bias"]
    return reorder(weight[:, hidden:]), reorder(weight[:, :hidden]), reorder(bias), np.zeros_like(bias)


def _rnn(weights: dict[str, np.ndarray], prefix: str, hidden: int) -> tuple[np.ndarray, ...]:
    weight, bias = weights[f"{prefix}.linear.weight"], weights[f"{prefix}.linear.bias"]
    return weight[:, hidden:], weight[:, :hidden], bias, np.zeros_like(bias)


def _gru(weights: dict[str, np.ndarray], prefix: str, hidden: int) -> tuple[np.ndarray, ...]:
    gates, gates_bias = weights[f"{prefix}.gates.weight"], weights[f"{prefix}.gates.bias"]  # rows z, r over [h, x]
    (z, r), (bias_z, bias_r) = np.split(gates, 2), np.split(gates_bias, 2)
    w_ih = np.concatenate([r[:, hidden:], z[:, hidden:], weights[f"{prefix}.candidate_x.weight"]])
    w_hh = np.concatenate([r[:, :hidden], z[:, :hidden], weights[f"{prefix}.candidate_h.weight"]])
    zeros = np.zeros_like(bias_r)
    return (w_ih, w_hh, np.concatenate([bias_r, bias_z, weights[f"{prefix}.candidate_x.bias"]]),
            np.concatenate([zeros, zeros, weights[f"{prefix}.candidate_h.bias"]]))


CELLS = {"lstm": _lstm, "rnn": _rnn, "gru": _gru}


def load_version(model_dir: Path) -> tuple[SentimentModel, Config]:
    """The model of a ``step``-graph version as a ``SentimentModel`` (its architecture from the manifest)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    if "step" not in manifest["graphs"]:
        raise ValueError(f"{model_dir}: no step graph to read the weights from (graphs {sorted(manifest['graphs'])})")
    architecture = manifest["model"]
    cfg = Config(**{k: architecture[k] for k in ("cell", "embed", "hidden", "layers", "pool")}, dropout=0.0)
    weights = onnx_initializers(model_dir / "step.onnx")
    model = SentimentModel(weights["embedding.weight"].shape[0], cfg)
    state = {name: weights[name] for name in ("embedding.weight", "classifier.weight", "classifier.bias")}
    model.load_state_dict({k: torch.tensor(v) for k, v in (state | rnn_weights(weights, cfg)).items()})
    return model.eval(), cfg


def rnn_weights(weights: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]:
    """``nn.LSTM``/``GRU``/``RNN`` parameters (``rnn.weight_ih_l0``, …) from the course cells' (``recurrent.*``)."""
    state = {}
    for layer in range(cfg.layers):
        parts = CELLS[cfg.cell](weights, f"recurrent.layers.{layer}", cfg.hidden)
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), parts, strict=True):
            state[f"rnn.{name}_l{layer}"] = value
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.sentiment_init", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a shipped version with a step graph, e.g. models/sentiment/1")
    parser.add_argument("--out", type=Path, required=True, help="where to write model.pt, vocab.json, metrics.json")
    args = parser.parse_args(argv)
    model, cfg = load_version(args.model_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(cfg), "state_dict": model.state_dict()}, args.out / "model.pt")
    shutil.copyfile(args.model_dir / "vocab.json", args.out / "vocab.json")
    write_json(args.out / "metrics.json", json.loads((args.model_dir / "manifest.json").read_text())["metrics"])
    print(f"sentiment_init: {args.model_dir} -> {args.out / 'model.pt'}")


if __name__ == "__main__":
    main()
