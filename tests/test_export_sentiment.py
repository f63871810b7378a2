"""Sentiment export: ONNX chunk by chunk equals PyTorch, batching changes nothing, the loader guards the files."""

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.repository import ManifestError, load_model
from evaluate.sentiment import sentiment_steps
from training.sentiment import Config, SentimentModel
from training.sentiment_data import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 30


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[SentimentModel, Path]]:
    return {(cell, pool): export_tiny(tmp_path_factory.mktemp(cell), cell, pool)
            for cell, pool in (("lstm", "meanmax"), ("gru", "last"))}


def export_tiny(tmp_path: Path, cell: str, pool: str) -> tuple[SentimentModel, Path]:
    torch.manual_seed(0)
    cfg = Config(cell=cell, pool=pool, embed=8, hidden=12, layers=2, dropout=0.0)
    model = SentimentModel(VOCAB, cfg).eval()
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": asdict(cfg), "state_dict": model.state_dict()}, run / "model.pt")
    Vocabulary([f"w{i}" for i in range(VOCAB - 2)]).save(run / "vocab.json")
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5}))
    # A fresh process per export, as `make models` does.
    subprocess.run([sys.executable, "-m", "export", "sentiment", "--checkpoint", str(run / "model.pt"),
                    "--out", str(tmp_path / "models")], cwd=ROOT, check=True, capture_output=True)
    return model, tmp_path / "models" / "sentiment" / "1"


def run_chunks(model_dir: Path, streams: list[np.ndarray]) -> list[np.ndarray]:
    """Every stream through the chunk graph in one batch, 16 tokens per run (the reference runtime's loop)."""
    outputs: list[list[np.ndarray]] = [[] for _ in streams]
    for rows, probs, counts in sentiment_steps(load_model(model_dir), [s.tolist() for s in streams]):
        for row, p, count in zip(rows.tolist(), probs, counts.tolist(), strict=True):
            outputs[row].extend(p[:count])
    return [np.stack(o) for o in outputs]


@pytest.mark.parametrize(("cell", "pool"), [("lstm", "meanmax"), ("gru", "last")])
def test_chunk_graph_matches_pytorch_for_every_token_length_and_batch_size(exported: dict, cell: str, pool: str
                                                                           ) -> None:
    model, model_dir = exported[cell, pool]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for graph in manifest["graphs"].values():  # dynamic axes survived the export
        assert all(tensor["shape"][0] == "batch" for tensor in graph["inputs"])
        assert graph["inputs"][0]["shape"] == ["batch", "tokens"]
    assert sorted(manifest["graphs"]) == ["chunk", "sequence"] and manifest["preprocessing"]["chunk_tokens"] == 16

    # Rows of different lengths share each run (each stops at its own length), and streams longer than one
    # run's 16 tokens carry their state, pools and count from run to run.
    rng = np.random.default_rng(0)
    streams = [rng.integers(1, VOCAB, size=rng.integers(1, 12)) for _ in range(15)]
    streams += [rng.integers(1, VOCAB, size=size) for size in (64, 150)]
    with torch.no_grad():
        expected = [torch.softmax(model.logits_per_token(torch.from_numpy(s)[None]), -1)[0].numpy() for s in streams]
    solo = [run_chunks(model_dir, [s])[0] for s in streams]
    for got, want in zip(solo, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    for size in (3, 17):
        batched = [p for start in range(0, 17, size) for p in run_chunks(model_dir, streams[start : start + size])]
        for got, alone in zip(batched, solo, strict=True):
            np.testing.assert_allclose(got, alone, atol=1e-6)

    sequence = load_model(model_dir).sessions["sequence"]
    lengths = np.array([len(s) for s in streams])
    ids = np.zeros((17, lengths.max()), dtype=np.int64)
    for row, s in enumerate(streams):
        ids[row, : len(s)] = s
    (probs,) = sequence.run(None, {"ids": ids, "lengths": lengths})
    np.testing.assert_allclose(probs, np.stack([e[-1] for e in expected]), atol=1e-4)


def test_loader_rejects_tampered_and_unpaired_models(exported: dict, tmp_path: Path) -> None:
    model_dir = shutil.copytree(exported["lstm", "meanmax"][1], tmp_path / "sentiment" / "1")
    load_model(model_dir)
    vocab = model_dir / "vocab.json"
    original = vocab.read_bytes()
    vocab.write_bytes(original.replace(b"w1", b"x1", 1))
    with pytest.raises(ManifestError, match=r"files\.vocab\.json: sha256 mismatch"):
        load_model(model_dir)
    vocab.write_bytes(original)

    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["state"][1]["output"] = "c_missing"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"state\[1\]\.output: state 'c' has no paired output"):
        load_model(model_dir)
    manifest["state"][1]["output"] = "c_next"
    manifest["graphs"]["chunk"]["inputs"].append({"name": "ghost", "dtype": "float32", "shape": ["batch"]})
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"graphs\.chunk\.inputs\[7\]: 'ghost' is not in chunk\.onnx"):
        load_model(model_dir)
