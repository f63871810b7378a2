"""The sentiment tokenizer: a regular expression over lower-cased text, and a vocabulary.

Training builds the vocabulary with ``tokenize``; export saves it with the pattern as JSON
(``vocab.json``); the server and the reference runtime read it back with ``WordTokenizer``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TOKEN_PATTERN = r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]"


def tokenize(text: str, pattern: str = TOKEN_PATTERN, lowercase: bool = True) -> list[str]:
    return re.findall(pattern, text.lower() if lowercase else text)


class WordTokenizer:
    """``tokenize`` with a saved vocabulary; unknown words map to ``unk_id``."""

    def __init__(self, path: Path, unk_id: int, lowercase: bool = True) -> None:
        vocabulary = json.loads(path.read_text())
        self.pattern = re.compile(vocabulary["token_pattern"])
        self.lowercase = lowercase
        self.index = {word: i for i, word in enumerate(vocabulary["words"])}
        self.unk_id = unk_id

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
