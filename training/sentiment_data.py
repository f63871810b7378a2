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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.words import TOKEN_PATTERN, tokenize
from training.common import split_indices

LABELS = ("rotten", "fresh")  # class index 1 = positive
PAD, UNK = "<pad>", "<unk>"


# The long-text set (``long_texts``): same-movie groups bucketed by snippet count, and mixed texts of this many.
MOVIE_BUCKETS = (("movie_1", 1, 1), ("movie_2-4", 2, 4), ("movie_5-7", 5, 7))
MIXED_SIZES = (10, 30, 100, 400)
MIXED_TEXTS = 120  # mixed texts per size, half of each label


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: np.ndarray
    movies: list[str] = field(default_factory=list)  # each text's movie (empty for made-up texts)


def load_snippets(path: Path) -> tuple[list[str], np.ndarray]:
    """Keep ``fresh``/``rotten`` rows, drop ``plot`` and duplicate texts (first occurrence wins)."""
    texts, labels, _ = load_corpus(path)
    return texts, labels


def load_corpus(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """``load_snippets`` and each snippet's movie."""
    seen: set[str] = set()
    texts, labels, movies = [], [], []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text = " ".join(row["text"].split())
            if row["category"] not in LABELS or not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(LABELS.index(row["category"]))
            movies.append(row["movie_name"])
    return texts, np.asarray(labels, dtype=np.int64), movies


def load_plots(path: Path) -> list[str]:
    """The unlabelled ``plot`` descriptions of the same corpus (in-domain text, no labels)."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle) if row["category"] == "plot"]


def split_snippets(path: Path, seed: int = 0, fractions: tuple[float, ...] = (0.8, 0.1, 0.1)) -> dict[str, Split]:
    """A seeded train/validation/test split, recorded beside the data file.

    The record holds each part's indices into the deduplicated corpus and a hash of the
    source file; a later call with the same seed must reproduce it exactly, or it fails.
    """
    texts, labels, movies = load_corpus(path)
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
        name: Split([texts[i] for i in part], labels[part], [movies[i] for i in part])
        for name, part in zip(("train", "validation", "test"), parts, strict=True)
    }


def movie_groups(split: Split) -> dict[tuple[str, int], list[str]]:
    """The snippets of ``split`` by (movie, label), in corpus order."""
    groups: dict[tuple[str, int], list[str]] = {}
    for text, label, movie in zip(split.texts, split.labels.tolist(), split.movies, strict=True):
        groups.setdefault((movie, label), []).append(text)
    return groups


def mixed_texts(split: Split, size: int, count: int, seed: int) -> Split:
    """``count`` texts (half of each label, alternating) of ``size`` distinct snippets of one label, drawn without
    replacement within a text by ``default_rng([seed, size, index])``: reviews longer than any one movie has."""
    pools = [np.flatnonzero(split.labels == label) for label in range(len(LABELS))]
    texts, labels = [], []
    for index in range(count):
        label = index % len(LABELS)
        chosen = np.random.default_rng([seed, size, index]).choice(pools[label], size, replace=False)
        texts.append(" ".join(split.texts[i] for i in chosen))
        labels.append(label)
    return Split(texts, np.array(labels, dtype=np.int64))


def long_texts(test: Split) -> dict[str, Split]:
    """The frozen long-text evaluation set, from the test split only (nothing a model trained on leaks in).

    - ``movie_1``, ``movie_2-4``, ``movie_5-7``: every (movie, label) group of test snippets (``movie_groups``), by
      its snippet count (``MOVIE_BUCKETS``; the test split holds at most 7 snippets of one movie and label);
    - ``mixed_N``: ``MIXED_TEXTS`` texts of ``N`` same-label test snippets from any movies (``mixed_texts``,
      seed 0) for each ``N`` in ``MIXED_SIZES``, for lengths no movie reaches.
    """
    groups = movie_groups(test)
    out = {}
    for name, low, high in MOVIE_BUCKETS:
        chosen = [(key, snippets) for key, snippets in groups.items() if low <= len(snippets) <= high]
        out[name] = Split([" ".join(snippets) for _, snippets in chosen],
                                      np.array([label for (_, label), _ in chosen], dtype=np.int64),
                                      [movie for (movie, _), _ in chosen])
    for size in MIXED_SIZES:
        out[f"mixed_{size}"] = mixed_texts(test, size, MIXED_TEXTS, seed=0)
    return out


def review(test: Split, chars: int) -> str:
    """The longest ``mixed_400`` text of the long-text set, cut at a space within ``chars`` characters: a whole review
    for the server's tests and benchmark."""
    text = max(long_texts(test)["mixed_400"].texts, key=len)
    return text[: text.rfind(" ", 0, chars)] if len(text) > chars else text


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
