"""``python -m evaluate.long_texts [models/] [--first 64] [--record]``: sentiment accuracy by text length.

For every shipped sentiment model, on the test split and on each bucket of the long-text set built from
it (``training.sentiment_data.long_texts``): the texts, their mean tokens and characters, the accuracy of
the whole text (``Classify`` since issue 14, and the stream's last update) and of its first ``--first``
tokens (``Classify`` before: the training cut). Then texts of both labels (``half_and_half``), which no label
fits: how often the model calls them fresh, and how sure it is. ``--record`` writes the whole-text accuracy of each
long-text bucket into the model's manifest (``metrics.long_text_accuracy_<bucket>``), which ``make
check-models`` then re-scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from contract.repository import load_repository
from evaluate.check import DATA, LONG_TEXT, accuracy
from evaluate.sentiment import sentiment_ids, sentiment_probs
from training.sentiment_data import MIXED_SIZES, MIXED_TEXTS, Split, long_texts, split_snippets


def half_and_half(test: Split, size: int, count: int = MIXED_TEXTS, seed: int = 1) -> list[str]:
    """``count`` texts of ``size // 2`` rotten and ``size // 2`` fresh test snippets in a random order, each drawn
    by ``default_rng([seed, size, index])``."""
    pools = [np.flatnonzero(test.labels == label) for label in (0, 1)]
    texts = []
    for index in range(count):
        rng = np.random.default_rng([seed, size, index])
        chosen = rng.permutation(np.concatenate([rng.choice(pool, size // 2, replace=False) for pool in pools]))
        texts.append(" ".join(test.texts[i] for i in chosen))
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluate.long_texts", description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path, nargs="?", default=Path("models"))
    parser.add_argument("--data", type=Path, default=DATA, help="the data sets (make data)")
    parser.add_argument("--first", type=int, default=64, help="tokens the old Classify read")
    parser.add_argument("--record", action="store_true", help="write the long-text accuracies into the manifests")
    args = parser.parse_args(argv)
    test = split_snippets(args.data / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2")["test"]
    sets = {"test split": test, **long_texts(test)}
    for version, model in load_repository(args.repository).get("sentiment", {}).items():
        print(f"sentiment/{version}: set, texts, mean tokens, mean characters, accuracy whole text, first "
              f"{args.first} tokens; whole text: accuracy on rotten, on fresh, mean confidence (max probability)")
        whole = {}
        for name, split in sets.items():
            tokens = np.mean([len(ids) for ids in sentiment_ids(model, split.texts)])
            chars = np.mean([len(text) for text in split.texts])
            probs = sentiment_probs(model, split.texts)
            right = probs.argmax(-1) == split.labels
            whole[name] = float(right.mean())
            print(f"{name:12s} {len(split.texts):5d} {tokens:7.0f} {chars:8.0f} {whole[name]:.4f} "
                  f"{accuracy(model, split, args.first):.4f} {right[split.labels == 0].mean():.4f} "
                  f"{right[split.labels == 1].mean():.4f} {probs.max(-1).mean():.4f}", flush=True)
        print("half rotten, half fresh snippets: texts, share called fresh, mean P(fresh), mean confidence")
        for size in MIXED_SIZES:
            fresh = sentiment_probs(model, half_and_half(test, size))[:, -1]
            print(f"mixed_{size:<6d} {len(fresh):5d} {np.mean(fresh >= 0.5):.4f} {fresh.mean():.4f} "
                  f"{np.mean(np.maximum(fresh, 1 - fresh)):.4f}", flush=True)
        if args.record:
            path = model.path / "manifest.json"
            manifest = json.loads(path.read_text())
            manifest["metrics"] |= {f"{LONG_TEXT}{name}": whole[name] for name in sets if name != "test split"}
            path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")  # as export writes it


if __name__ == "__main__":
    main()
