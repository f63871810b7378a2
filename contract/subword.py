"""Sentencepiece BPE without the sentencepiece package: the server's translation tokenizer.

Export writes the subword model as ``pieces.json`` (``export/subword.py``); this module
encodes and decodes with it in plain Python, so the server keeps to its five dependencies.
``tests/test_subword.py`` checks it against sentencepiece itself on every test-split sentence.

Encoding repeats sentencepiece's BPE: normalise (NFKC, collapse whitespace), mark word starts
with ``▁``, start from single characters, and merge the adjacent pair whose union is the
highest-scoring piece (leftmost on ties) until none is left, word by word. A character outside the
vocabulary becomes ``unk_id``, and adjacent unknowns form one ``unk``, as in sentencepiece.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

WORD_START = "\u2581"
NORMAL = 1  # sentencepiece piece type of ordinary pieces; control (3) and unknown (2) never match text
WORDS = re.compile(f"{WORD_START}[^{WORD_START}]*|[^{WORD_START}]+")  # a normalised text's words
CACHE_WORDS = 100_000  # words whose ids are kept


class SubwordBPE:
    def __init__(self, path: Path) -> None:
        spec = json.loads(path.read_text())
        if spec.get("model_type") != "bpe":
            raise ValueError(f"{path}: model_type {spec.get('model_type')!r} is not supported (only 'bpe')")
        self.pieces = [piece for piece, _, _ in spec["pieces"]]
        self.scores = {piece: score for piece, score, kind in spec["pieces"] if kind == NORMAL}
        self.ids = {piece: i for i, (piece, _, kind) in enumerate(spec["pieces"]) if kind == NORMAL}
        self.unk_id = spec["unk_id"]
        self.add_dummy_prefix = spec.get("add_dummy_prefix", True)
        self.control = {i for i, (_, _, kind) in enumerate(spec["pieces"]) if kind != NORMAL}
        if spanning := [piece for piece in self.ids if WORD_START in piece[1:]]:
            raise ValueError(f"{path}: pieces {spanning[:3]} span words; word-by-word encoding needs none")
        self.cache: dict[str, tuple[int, ...]] = {}

    def normalize(self, text: str) -> str:
        text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()
        return (WORD_START if self.add_dummy_prefix and text else "") + text.replace(" ", WORD_START)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in WORDS.findall(self.normalize(text)):
            for token in self._word(word):
                if not (token == self.unk_id and ids and ids[-1] == self.unk_id):
                    ids.append(token)
        return ids

    def _word(self, word: str) -> tuple[int, ...]:
        """One word's ids. Pieces never contain a word start after their first character (checked on
        load), so no merge crosses words: encoding word by word gives the whole text's merges, and
        the words, which repeat, are cached."""
        cached = self.cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word)
        while len(symbols) > 1:
            best, best_score = -1, float("-inf")
            for i in range(len(symbols) - 1):
                score = self.scores.get(symbols[i] + symbols[i + 1])
                if score is not None and score > best_score:
                    best, best_score = i, score
            if best < 0:
                break
            symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        ids = tuple(self.ids.get(symbol, self.unk_id) for symbol in symbols)
        if len(self.cache) < CACHE_WORDS:
            self.cache[word] = ids
        return ids

    def piece(self, token_id: int) -> str:
        """The piece as text: the word-start marker becomes a space."""
        return self.pieces[token_id].replace(WORD_START, " ")

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``: control ids are dropped, ``unk`` reads `` ⁇ ``, the dummy prefix's space is removed."""
        parts: list[str] = []
        for token_id in ids:
            if token_id == self.unk_id:
                parts.append(" \u2047 ")
            elif token_id not in self.control:
                text = self.piece(token_id)
                parts.append(text[1:] if not parts and self.add_dummy_prefix and text.startswith(" ") else text)
        return "".join(parts)
