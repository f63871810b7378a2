"""Warm start: the weights of a shipped translation version, read back from its ONNX graphs.

The exported graphs keep most parameters under their PyTorch names (``model.<name>``); the
exporter folds three into unnamed constants, recovered here by shape and layout:

- ``key.weight`` (A, 2H) and ``energy.weight`` (1, A) are stored transposed (``x @ W^T``);
- each encoder GRU's two biases are one ONNX ``B`` (1, 6H) = ``[b_ih; b_hh]`` in ONNX gate order
  ``z, r, h``, while PyTorch orders them ``r, z, n``.

The result is checked by the caller against ONNX Runtime (``tests/test_translation_init.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.common import onnx_initializers
from training.seq2seq import Seq2Seq, Seq2SeqConfig


def _gru_biases(onnx_bias: np.ndarray, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """ONNX ``B`` (1, 6H) in ``z, r, h`` order → PyTorch ``bias_ih``, ``bias_hh`` in ``r, z, n``."""
    flat = onnx_bias.reshape(6 * hidden)

    def reorder(b: np.ndarray) -> np.ndarray:
        z, r, h = np.split(b, 3)
        return np.concatenate([r, z, h])

    return reorder(flat[: 3 * hidden]), reorder(flat[3 * hidden :])


def load_version(model_dir: Path) -> tuple[Seq2Seq, Path]:
    """The Bahdanau model of ``model_dir`` (``encoder.onnx``, ``decoder_step.onnx``, ``manifest.json``)
    as a ``Seq2Seq`` and the path of its ``spm.model``."""
    import json

    manifest = json.loads((model_dir / "manifest.json").read_text())
    config = Seq2SeqConfig(**{k: v for k, v in manifest["model"].items() if k != "parameters"})
    if config.attention != "bahdanau":
        raise ValueError(f"{model_dir}: warm start supports bahdanau attention, got {config.attention!r}")
    model = Seq2Seq(config)
    weights = {**onnx_initializers(model_dir / "encoder.onnx"), **onnx_initializers(model_dir / "decoder_step.onnx")}
    named = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    hidden, attention_dim = config.hidden, config.attention_dim
    unnamed = [v for k, v in weights.items() if not k.startswith("model.")]
    biases = [v for v in unnamed if v.shape == (1, 6 * hidden)]
    (key_t,) = [v for v in unnamed if v.shape == (2 * hidden, attention_dim)]
    (energy_t,) = [v for v in unnamed if v.shape == (attention_dim, 1)]
    if len(biases) != 2:
        raise ValueError(f"{model_dir}: expected 2 encoder GRU biases, found {len(biases)}")
    named["key.weight"], named["energy.weight"] = key_t.T, energy_t.T
    for direction, bias in zip(("encoder_fwd", "encoder_bwd"), biases, strict=True):
        named[f"{direction}.bias_ih_l0"], named[f"{direction}.bias_hh_l0"] = _gru_biases(bias, hidden)
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in named.items()}
    model.load_state_dict(state, strict=True)
    return model, model_dir / manifest["preprocessing"]["subwords"]
