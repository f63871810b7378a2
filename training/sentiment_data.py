"""Rotten Tomatoes snippets: loading, the recorded split, and the vocabulary.

The tokenizer is ``contract/words.py`` (a regular expression); the vocabulary is saved as JSON
with its pattern, which the server and the reference runtime read with ``contract.words.WordTokenizer``.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.words import TOKEN_PATTERN, tokenize
from training.common import split_indices

LABELS = ("rotten", "fresh")  # class index 1 = positive
PAD, UNK = "<pad>", "<unk>"


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: np.ndarray


def load_snippets(path: Path) -> tuple[list[str], np.ndarray]:
    """Keep ``fresh``/``rotten`` rows, drop ``plot`` and duplicate texts (first occurrence wins)."""
    seen: set[str] = set()
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text = " ".join(row["text"].split())
            if row["category"] not in LABELS or not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(LABELS.index(row["category"]))
    return texts, np.asarray(labels, dtype=np.int64)


def load_plots(path: Path) -> list[str]:
    """The unlabelled ``plot`` descriptions of the same corpus (in-domain text, no labels)."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle) if row["category"] == "plot"]


def split_snippets(path: Path, seed: int = 0, fractions: tuple[float, ...] = (0.8, 0.1, 0.1)) -> dict[str, Split]:
    """A seeded train/validation/test split, recorded beside the data file.

    The record holds each part's indices into the deduplicated corpus and a hash of the
    source file; a later call with the same seed must reproduce it exactly, or it fails.
    """
    texts, labels = load_snippets(path)
    parts = split_indices(len(texts), fractions, seed)
    record = {
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "seed": seed,
        "fractions": list(fractions),
        **{name: part.tolist() for name, part in zip(("train", "validation", "test"), parts, strict=True)},
    }
    record_path = path.parent / f"split_seed{seed}.json"
    if record_path.exists():
        if json.loads(record_path.read_text()) != record:
            raise RuntimeError(f"{record_path}: the recorded split differs from the one made now; delete it to redo")
    else:
        record_path.write_text(json.dumps(record) + "\n")
    return {
        name: Split([texts[i] for i in part], labels[part])
        for name, part in zip(("train", "validation", "test"), parts, strict=True)
    }


class Vocabulary:
    """Word to id; id 0 is padding and id 1 is ``<unk>`` for every unseen word."""

    def __init__(self, words: list[str]) -> None:
        self.words = [PAD, UNK, *words]
        self.index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, texts: list[str], min_count: int = 2) -> Vocabulary:
        counts = Counter(token for text in texts for token in tokenize(text))
        return cls(sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        unk = self.index[UNK]
        return [self.index.get(token, unk) for token in tokenize(text)]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"token_pattern": TOKEN_PATTERN, "lowercase": True, "words": self.words}))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        payload = json.loads(path.read_text())
        if payload["words"][:2] != [PAD, UNK]:
            raise ValueError(f"{path}: the vocabulary must start with {PAD!r}, {UNK!r}")
        return cls(payload["words"][2:])
