"""``python -m export.check_shipped [models/]``: score the shipped ONNX models on their test splits.

Runs with ONNX Runtime and numpy only (no torch), and fails when a model scores below the
figure in its manifest by more than the tolerance: the committed graphs are what was measured.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from server.repository import Model, load_repository
from training.sentiment_data import Vocabulary, split_snippets

DATA = Path("data")
TOLERANCE = {"test_accuracy": 0.005}


def sentiment_accuracy(model: Model, data_dir: Path) -> dict[str, float]:
    """Accuracy of the ``sequence`` graph on the recorded test split."""
    prep = model.manifest["preprocessing"]
    vocab = Vocabulary.load(model.path / prep["vocabulary"])
    test = split_snippets(data_dir / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2")["test"]
    encoded = [vocab.encode(text)[: prep["max_tokens"]] or [prep["unk_id"]] for text in test.texts]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    ids = np.full((len(encoded), lengths.max()), prep["pad_id"], dtype=np.int64)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = tokens
    (probs,) = model.sessions["sequence"].run(None, {"ids": ids, "lengths": lengths})
    return {"test_accuracy": float((probs.argmax(-1) == test.labels).mean())}


EVALUATORS: dict[str, Callable[[Model, Path], dict[str, float]]] = {"sentiment": sentiment_accuracy}


def check(repository: Path, data_dir: Path = DATA) -> list[str]:
    """One line per checked metric; raises ``SystemExit`` naming every regression."""
    lines, failures = [], []
    for name, versions in load_repository(repository).items():
        for version, model in versions.items():
            evaluate = EVALUATORS.get(model.task)
            if evaluate is None:
                continue
            for metric, value in evaluate(model, data_dir).items():
                recorded = model.manifest["metrics"][metric]
                line = f"{name}/{version} {metric}: {value:.4f} (manifest {recorded:.4f})"
                lines.append(line)
                if value < recorded - TOLERANCE[metric]:
                    failures.append(line)
    if failures:
        raise SystemExit("shipped models regressed:\n" + "\n".join(failures))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path, nargs="?", default=Path("models"))
    args = parser.parse_args(argv)
    for line in check(args.repository):
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
