"""The sentiment tokenizer without torch: regex words as in ``training/sentiment_data.py``.

The translation tokenizer is ``server/subword.py``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


class WordTokenizer:
    """``re.findall(token_pattern, text.lower())`` and a vocabulary; unknown words map to ``unk_id``."""

    def __init__(self, folder: Path, preprocessing: dict[str, Any]) -> None:
        vocabulary = json.loads((folder / preprocessing["vocabulary"]).read_text())
        self.pattern = re.compile(vocabulary["token_pattern"])
        self.lowercase = preprocessing.get("lowercase", True)
        self.index = {word: i for i, word in enumerate(vocabulary["words"])}
        self.unk_id = preprocessing["unk_id"]

    def normalize(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def tokens(self, text: str) -> list[str]:
        return self.pattern.findall(self.normalize(text))

    def ids(self, tokens: list[str]) -> list[int]:
        return [self.index.get(token, self.unk_id) for token in tokens]


class IncrementalWords:
    """Tokens of a text that arrives in chunks, emitted only once no later chunk can change them.

    A match is held while it touches the end of the text read so far (``grea`` may become
    ``great``), and so is a word followed only by an apostrophe (``it'`` may become ``it's``).
    Since no token spans whitespace, the emitted tokens always equal those of the whole text.
    Chunks are lower-cased one by one (exact for all but context-dependent letters like final sigma).
    """

    def __init__(self, tokenizer: WordTokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending = ""

    def feed(self, chunk: str) -> list[str]:
        self.pending += self.tokenizer.normalize(chunk)
        matches = list(self.tokenizer.pattern.finditer(self.pending))
        size = len(self.pending)
        apostrophe = self.pending.endswith("'")
        while matches and (matches[-1].end() == size
                           or (apostrophe and matches[-1].end() == size - 1 and "'" not in matches[-1].group())):
            matches.pop()
        self.pending = self.pending[matches[-1].end() if matches else 0:]
        return [m.group() for m in matches]

    def flush(self) -> list[str]:
        tokens = self.tokenizer.pattern.findall(self.pending)
        self.pending = ""
        return tokens
