"""Translation export: an ``encoder`` graph (once per source) and a ``decoder_step`` graph (one token).

Both graphs are ``training/seq2seq.py``'s ``encode`` and ``step`` as they are, traced with dynamic
``batch`` and ``src`` axes. The manifest wires them: the decoder's ``state`` starts from the
encoder's ``state`` output, and ``encoder_outputs``/``keys``/``mask`` are per-stream context
(padded per batch, ``mask`` with false). The step returns the full ``log_probs [batch, V]``
rather than a top-k: greedy, beam search and the streamed log-probability all need them, and an
in-graph ArgMax measured slower on GPU. The training run's sentencepiece model ships as it is, as
``spm.model`` (checked by ``export/subword.py``, run by ``contract.subword.Subwords``).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from contract.translation import OutputLength
from export.onnx_io import describe_graph, export_graph, write_manifest
from export.subword import check_subwords
from training.seq2seq import Seq2Seq, Seq2SeqConfig
from training.translation_data import BOS_ID, EOS_ID, PAD_ID, SOURCES, UNK_ID

ENCODER_OUTPUTS = ["encoder_outputs", "keys", "mask", "state"]
STEP_INPUTS = ["prev_tokens", "state", "encoder_outputs", "keys", "mask"]
STEP_OUTPUTS = ["log_probs", "new_state", "attention"]
PER_SOURCE = ("encoder_outputs", "keys", "mask", "attention")


class Encoder(nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.encode(src_ids, src_lengths)


class DecoderStep(nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, prev_tokens: torch.Tensor, state: torch.Tensor, encoder_outputs: torch.Tensor, keys: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        return self.model.step(prev_tokens, state, encoder_outputs, keys, mask)


def load_model(checkpoint: Path) -> Seq2Seq:
    payload = torch.load(checkpoint, weights_only=True, map_location="cpu")
    model = Seq2Seq(Seq2SeqConfig(**payload["config"]))
    model.load_state_dict(payload["model"])
    return model.eval()


def export_graphs(model: Seq2Seq, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Trace both graphs on a batch of 3 sources of lengths 5, 3, 1 (not 1: it could be specialised away)."""
    lengths = torch.tensor([5, 3, 1])
    src = torch.tensor([[5, 6, 7, 8, EOS_ID], [9, 10, EOS_ID, PAD_ID, PAD_ID], [EOS_ID, *[PAD_ID] * 4]])
    with torch.no_grad():
        outputs, keys, mask, state = model.encode(src, lengths)
    batch_src = {0: "batch", 1: "src"}
    export_graph(
        Encoder(model), (src, lengths), out_dir / "encoder.onnx", ["src_ids", "src_lengths"], ENCODER_OUTPUTS,
        {"src_ids": batch_src, "src_lengths": {0: "batch"}},
    )
    step = export_graph(
        DecoderStep(model), (torch.full((3,), BOS_ID), state, outputs, keys, mask), out_dir / "decoder_step.onnx",
        STEP_INPUTS, STEP_OUTPUTS,
        {"prev_tokens": {0: "batch"}, "state": {0: "batch"}, "encoder_outputs": batch_src, "keys": batch_src,
         "mask": batch_src},
    )
    # The exporter declares the ONNX GRU's outputs with the traced length (5) although the graph
    # computes any length; the server cuts padded rows by these symbols, so name them.
    encoder = name_output_axes(out_dir / "encoder.onnx", {"encoder_outputs": batch_src, "keys": batch_src})
    graphs = {"encoder": encoder, "decoder_step": step}
    for graph, entry in graphs.items():  # every output is batch-first; the per-source ones also have src
        for tensor in entry["outputs"]:
            expected = ["batch", "src"] if tensor["name"] in PER_SOURCE else ["batch"]
            if tensor["shape"][: len(expected)] != expected:
                raise RuntimeError(f"{graph}: output {tensor['name']!r} is {tensor['shape']}, not {expected} first")
    return graphs


def name_output_axes(path: Path, axes: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Make the given output axes symbolic in the saved graph and return its new manifest entry.

    The intermediate shape hints (``value_info``) go too: they hold the traced length as well,
    and ONNX Runtime infers them again when it loads the graph.
    """
    model = onnx.load(str(path))
    for output in model.graph.output:
        for axis, symbol in axes.get(output.name, {}).items():
            output.type.tensor_type.shape.dim[axis].dim_param = symbol
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    return describe_graph(path)


def export(checkpoint: Path, out_dir: Path, metrics: dict[str, Any]) -> Path:
    model = load_model(checkpoint)
    cfg = model.config
    out_dir.mkdir(parents=True, exist_ok=True)
    special_ids = {"pad_id": PAD_ID, "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID}
    shutil.copyfile(check_subwords(checkpoint.parent / "spm.model", special_ids), out_dir / "spm.model")
    graphs = export_graphs(model, out_dir)
    keys_dim = cfg.attention_dim if cfg.attention == "bahdanau" else cfg.hidden
    max_length = int(metrics.get("args", {}).get("max_len", 120))
    context = [
        {"graph": "decoder_step", "input": name, "from": {"graph": "encoder", "output": name}, "shape": shape,
         "dtype": dtype, "pad_value": pad}
        for name, shape, dtype, pad in (
            ("encoder_outputs", ["src", 2 * cfg.hidden], "float32", 0.0),
            ("keys", ["src", keys_dim], "float32", 0.0),
            ("mask", ["src"], "bool", False),
        )
    ]
    return write_manifest(out_dir, {
        "task": "translation",
        "description": f"English→German GRU encoder–decoder, {cfg.attention} attention, joint sentencepiece BPE",
        "graphs": graphs,
        "state": [{"graph": "decoder_step", "input": "state", "output": "new_state", "shape": [cfg.hidden],
                   "dtype": "float32", "initial": {"graph": "encoder", "output": "state"}}],
        "context": context,
        "preprocessing": {
            "subwords": "spm.model",
            "pad_id": PAD_ID, "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID,
            "source_suffix": [EOS_ID],
            "output_length": asdict(OutputLength(max_length=max_length)),
            "length_penalty": float(metrics.get("args", {}).get("length_penalty", 1.0)),
            "beam": int(metrics.get("args", {}).get("beam", 5)),
        },
        "model": {**cfg.to_dict(), "parameters": sum(p.numel() for p in model.parameters())},
        "metrics": manifest_metrics(metrics),
    })


def manifest_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The per-source test scores, plus one flat ``test_greedy_bleu_<source>`` per source that CI checks."""
    test = metrics.get("test", {})
    flat = {f"test_greedy_bleu_{s}": test[s]["greedy"]["bleu"] for s in SOURCES if s in test}
    return {**flat, "test": test, "valid_bleu_greedy": metrics.get("valid_bleu_greedy"),
            "chosen": metrics.get("chosen"), "sizes": metrics.get("sizes")}
