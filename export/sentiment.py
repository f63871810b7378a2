"""Sentiment export: a ``chunk`` graph (up to ``CHUNK_TOKENS`` tokens per stream and run, a probability after
each) and a ``sequence`` graph (whole texts).

A stream's chunk of text becomes one run instead of one run per token (version 1's ``step`` graph,
which the server still serves): the per-run cost of a server is several times a token's
(``bench/RESULTS.md``). Every state tensor is batch-first, ``[batch, ...]``, so a server can keep
streams in rows of one array per state:

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
from torch.nn import functional as F

from contract.words import MAX_TOKENS
from export.onnx_io import export_graph, export_graph_apart, name_output_axes, wire_sequence_lengths, write_manifest
from training.sentiment import Config, SentimentModel
from training.sentiment_data import LABELS, PAD, UNK, Vocabulary

CHUNK_TOKENS = 16  # tokens of a stream per run of the chunk graph (the manifest's ``chunk_tokens``; bench/RESULTS.md)
LOWEST = -3.4e38  # about float32's lowest: the empty maximum (-inf, which JSON cannot hold)


def running_max(x: torch.Tensor, limit: int) -> torch.Tensor:
    """The maximum over ``x[:, :t+1]`` at every ``t`` (``torch.cummax``, which ONNX export lacks), for at most
    ``limit`` steps: log2(limit) shifted maxima (a Hillis–Steele scan)."""
    shift = 1
    while shift < limit:
        x = torch.maximum(x, F.pad(x, (0, 0, shift, 0), value=LOWEST)[:, : x.shape[1]])
        shift *= 2
    return x


class SentimentChunk(nn.Module):
    """Up to ``CHUNK_TOKENS`` tokens of every stream in one run: each stream's ``ids`` (right-padded to the longest,
    ``lengths`` real), its state in, the probabilities after each token and the state after its last real one.

    The recurrent layers are the trained ``nn.LSTM``/``GRU``/``RNN`` (ONNX's ``LSTM``/``GRU``/``RNN`` operators);
    ``export`` wires ``lengths`` into their ``sequence_lens`` (``onnx_io.wire_sequence_lengths``), so each row's
    final state is at its own length. Traced without it, the graph is right only for rows of full length, which
    is how the example batch is built.
    """

    def __init__(self, model: SentimentModel, cfg: Config) -> None:
        super().__init__()
        self.cell, self.pool = cfg.cell, cfg.pool
        self.embedding, self.rnn, self.classifier = model.embedding, model.rnn, model.classifier

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, state: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, ...]:
        cells = 2 if self.cell == "lstm" else 1
        layer_first = tuple(s.transpose(0, 1).contiguous() for s in state[:cells])  # [layers, batch, hidden]
        hidden, final = self.rnn(self.embedding(ids), layer_first if cells == 2 else layer_first[0])
        final = final if cells == 2 else (final,)
        new_state = tuple(s.transpose(0, 1) for s in final)
        features, pools = hidden, ()
        if self.pool == "meanmax":
            pool_sum, pool_max, count = state[cells:]
            valid = (torch.arange(ids.shape[1])[None, :] < lengths[:, None])[..., None]
            running_sum = pool_sum[:, None] + torch.cumsum(hidden * valid, dim=1)
            peak = torch.maximum(pool_max[:, None], running_max(hidden.masked_fill(~valid, LOWEST), CHUNK_TOKENS))
            seen = count[:, None] + torch.arange(1, ids.shape[1] + 1)[None, :, None]
            features = torch.cat([hidden, running_sum / seen, peak], dim=-1)
            last = (torch.arange(ids.shape[0]), lengths - 1)
            pools = (running_sum[last], peak[last], count + lengths[:, None])
        probs = torch.softmax(self.classifier(features), dim=-1)
        return (probs, *new_state, *pools)


def state_spec(cfg: Config) -> list[dict[str, Any]]:
    """The chunk graph's state pairs (``docs/manifest.md``), batch-first."""
    names = ["h", "c"] if cfg.cell == "lstm" else ["h"]
    spec = [{"input": n, "output": f"{n}_next", "shape": [cfg.layers, cfg.hidden], "initial": 0.0} for n in names]
    if cfg.pool == "meanmax":
        spec += [
            {"input": "pool_sum", "output": "pool_sum_next", "shape": [cfg.hidden], "initial": 0.0},
            {"input": "pool_max", "output": "pool_max_next", "shape": [cfg.hidden], "initial": LOWEST},
            {"input": "count", "output": "count_next", "shape": [1], "initial": 0.0},
        ]
    return [{"graph": "chunk", "dtype": "float32", **s} for s in spec]


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
    spec = state_spec(cfg)
    batch = 3  # not 1: a batch of one could be specialised away
    example_state = tuple(torch.full((batch, *s["shape"]), s["initial"]) for s in spec)
    state_names = [s["input"] for s in spec]
    chunk = out_dir / "chunk.onnx"
    export_graph_apart(
        SentimentChunk(model, cfg), (torch.arange(5, 20).reshape(batch, 5), torch.full((batch,), 5), example_state),
        chunk, ["ids", "lengths", *state_names], ["probs", *[s["output"] for s in spec]],
        {"ids": {0: "batch", 1: "tokens"}} | {name: {0: "batch"} for name in ["lengths", *state_names]},
    )
    # A second LSTM traced in one process can lose a dynamic axis (export/__main__.py) unless dynamo's caches
    # are cleared in between.
    torch._dynamo.reset()
    name_output_axes(chunk, {"probs": {1: "tokens"}})
    graphs = {
        "chunk": wire_sequence_lengths(chunk, "lengths"),
        "sequence": export_graph(
            SentimentSequence(model), (torch.tensor([[5, 6, 7], [8, 9, 0], [4, 0, 0]]), torch.tensor([3, 2, 1])),
            out_dir / "sequence.onnx", ["ids", "lengths"], ["probs"],
            {"ids": {0: "batch", 1: "tokens"}, "lengths": {0: "batch"}},
        ),
    }
    return write_manifest(out_dir, {
        "task": "sentiment",
        "description": f"{cfg.cell.upper()} sentiment classifier (Rotten Tomatoes), running probability per token, "
                       f"up to {CHUNK_TOKENS} tokens of each stream per run",
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
            "chunk_tokens": CHUNK_TOKENS,
        },
        "model": {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "embed": cfg.embed, "pool": cfg.pool,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "metrics": {k: metrics[k] for k in ("test_accuracy", "test_macro_f1", "dataset_sizes", "tfidf_baseline")
                    if k in metrics},
    })
