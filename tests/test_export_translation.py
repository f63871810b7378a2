"""Translation export: the two ONNX graphs equal PyTorch step by step, greedy decoding token for token,
and batching (padded sources of mixed lengths) changes nothing."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.repository import Model, load_model
from evaluate import translation_greedy
from training.seq2seq import Seq2Seq, Seq2SeqConfig, greedy_decode, smoothed_nll
from training.translation_data import BOS_ID, EOS_ID, PAD_ID, load_sentencepiece, train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 3, 17)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seq2Seq, Model]:
    tmp_path = tmp_path_factory.mktemp("translation")
    run = tmp_path / "run"
    texts = [f"the quick brown fox {i} jumps over der faule Hund" for i in range(50)]
    spm_model = train_sentencepiece(texts, run / "spm", vocab_size=60)
    vocab = load_sentencepiece(spm_model).get_piece_size()
    config = Seq2SeqConfig(vocab, emb=12, hidden=16, attention_dim=10, dropout=0.0)
    model = copy_task_model(config)
    torch.save({"config": config.to_dict(), "model": model.state_dict()}, run / "model.pt")
    test = {"greedy": {"bleu": 1.0, "chrf": 2.0}, "beam5": {"bleu": 1.5, "chrf": 2.5}, "pairs": 3}
    (run / "metrics.json").write_text(json.dumps({"test": {"ding": test}, "args": {"max_len": "40"}}))
    # A fresh process per export, as `make models` does.
    subprocess.run([sys.executable, "-m", "export", "translation", "--checkpoint", str(run / "model.pt"),
                    "--out", str(tmp_path / "models")], cwd=ROOT, check=True, capture_output=True)
    return model, load_model(tmp_path / "models" / "translation" / "1")


def copy_task_model(config: Seq2SeqConfig, steps: int = 150) -> Seq2Seq:
    """A tiny model trained for a second to copy its source: its greedy outputs stop at EOS at
    different lengths, and its log-probabilities are not the near-ties of random weights."""
    torch.manual_seed(0)
    model = Seq2Seq(config)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        batch = sources(config.vocab_size, count=32, seed=None)
        src, lengths = padded(batch)
        tgt_in = torch.cat([torch.full((32, 1), BOS_ID), src[:, :-1]], 1)
        loss = smoothed_nll(model(src, lengths, tgt_in), src, 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def sources(vocab: int, count: int = 17, seed: int | None = 0) -> list[list[int]]:
    """Random source ids ending in EOS, of lengths 1 to 12 (``seed=None``: drawn from torch's generator)."""
    rng = np.random.default_rng(seed if seed is not None else int(torch.randint(2**31, ())))
    return [[*rng.integers(4, vocab, size=rng.integers(0, 12)).tolist(), EOS_ID] for _ in range(count)]


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((len(rows), int(lengths.max())), PAD_ID)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, lengths


def teacher_forced(model: Model, src: list[list[int]], targets: np.ndarray) -> np.ndarray:
    """ORT log-probabilities ``[batch, T, V]`` with ``targets[:, t]`` fed at step ``t``."""
    ids, lengths = padded(src)
    names = [o.name for o in model.sessions["encoder"].get_outputs()]
    feed = dict(zip(names, model.sessions["encoder"].run(names, {"src_ids": ids.numpy(),
                                                                 "src_lengths": lengths.numpy()}), strict=True))
    step = model.sessions["decoder_step"]
    log_probs = []
    for t in range(targets.shape[1]):
        out = dict(zip([o.name for o in step.get_outputs()], step.run(None, {**feed, "prev_tokens": targets[:, t]}),
                       strict=True))
        feed["state"] = out["new_state"]
        log_probs.append(out["log_probs"])
    return np.stack(log_probs, 1)


def test_manifest_declares_symbolic_axes_state_and_context(exported: tuple[Seq2Seq, Model]) -> None:
    _, model = exported
    manifest = model.manifest.raw
    shapes = {(g, t["name"]): t["shape"] for g, graph in manifest["graphs"].items()
              for t in graph["inputs"] + graph["outputs"]}
    assert shapes["encoder", "src_ids"] == ["batch", "src"]
    assert shapes["encoder", "encoder_outputs"] == ["batch", "src", 32]
    assert shapes["encoder", "keys"] == ["batch", "src", 10]
    assert shapes["decoder_step", "attention"] == ["batch", "src"] and shapes["decoder_step", "log_probs"][0] == "batch"
    assert all(shape[0] == "batch" for shape in shapes.values())
    assert manifest["state"] == [{"graph": "decoder_step", "input": "state", "output": "new_state", "shape": [16],
                                  "dtype": "float32", "initial": {"graph": "encoder", "output": "state"}}]
    assert [(c["input"], c["pad_value"]) for c in manifest["context"]] == [
        ("encoder_outputs", 0.0), ("keys", 0.0), ("mask", False)]
    assert sorted(manifest["files"]) == ["decoder_step.onnx", "encoder.onnx", "spm.model"]
    assert manifest["preprocessing"]["subwords"] == "spm.model"
    assert (model.path / "spm.model").read_bytes() == (model.path.parents[2] / "run" / "spm.model").read_bytes()
    assert manifest["preprocessing"]["output_length"] == {"per_source_token": 2, "extra": 10, "max_length": 40}
    assert manifest["metrics"]["test_greedy_bleu_ding"] == 1.0


def test_teacher_forced_log_probs_match_pytorch_at_every_batch_size(exported: tuple[Seq2Seq, Model]) -> None:
    torch_model, model = exported
    src = sources(torch_model.config.vocab_size)
    rng = np.random.default_rng(1)
    targets = np.concatenate([np.full((17, 1), BOS_ID), rng.integers(4, torch_model.config.vocab_size, (17, 5))], 1)
    with torch.no_grad():
        expected = torch_model(*padded(src), torch.from_numpy(targets)).numpy()
    solo = np.concatenate([teacher_forced(model, [s], targets[i : i + 1]) for i, s in enumerate(src)])
    np.testing.assert_allclose(solo, expected, atol=1e-4)
    for size in BATCH_SIZES[1:]:
        batched = np.concatenate([teacher_forced(model, src[i : i + size], targets[i : i + size])
                                  for i in range(0, 17, size)])
        np.testing.assert_allclose(batched, solo, atol=1e-5)


def test_greedy_translations_match_pytorch_token_for_token(exported: tuple[Seq2Seq, Model]) -> None:
    torch_model, model = exported
    src = sources(torch_model.config.vocab_size, seed=2)
    expected, _ = greedy_decode(torch_model, *padded(src), max_len=model.manifest.preprocessing.max_length)
    limit = model.manifest.preprocessing.output_length.limit
    ended = [len(tokens) < limit(len(s)) - 1 for tokens, s in zip(expected, src, strict=True)]
    assert sum(ended) > 10, "most sentences should stop at EOS before the length limit"
    for size in BATCH_SIZES:
        assert translation_greedy(model, src, batch_size=size) == expected
