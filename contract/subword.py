"""The translation tokenizer: the training run's sentencepiece model, run by the ``sentencepiece`` package.

The model ships as ``spm.model`` (``preprocessing.subwords`` in the manifest), the file that
training wrote, so the server tokenizes exactly as training did: the ``nmt_nfkc`` normalizer
(NFKC plus sentencepiece's rules for control and zero-width characters), whitespace collapsing,
the word-start marker ``▁`` and BPE merges are the library's, not a copy of them. The package is
small and has no torch; ``docs/translation.md`` has its speed against the plain-Python BPE it
replaced and the equality check on the whole corpus.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sentencepiece

WORD_START = "\u2581"


class Subwords:
    """``encode`` text to ids, ``decode`` ids to text, ``piece`` of one id (``▁`` shown as a space)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.unk_id: int = self.processor.unk_id()
        self.pieces = [self.processor.id_to_piece(i).replace(WORD_START, " ")
                       for i in range(self.processor.get_piece_size())]

    def __len__(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``encode`` and each piece's character range in ``text`` (the library reports bytes)."""
        pieces = self.processor.encode(text, out_type="proto").pieces
        data = text.encode("utf-8")
        if len(data) == len(text):  # ASCII (most text): byte and character positions are the same
            return [p.id for p in pieces], [(p.begin, p.end) for p in pieces]
        chars = [0] * (len(data) + 1)
        position = 0
        for index, char in enumerate(text):
            size = len(char.encode("utf-8"))
            chars[position : position + size] = [index] * size
            position += size
        chars[position] = len(text)
        return [p.id for p in pieces], [(chars[p.begin], chars[p.end]) for p in pieces]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: control ids (pad, BOS, EOS) are dropped, ``unk`` reads `` ⁇ ``, no leading space."""
        return self.processor.decode([int(token_id) for token_id in ids])

    def piece(self, token_id: int) -> str:
        """The piece as text: the word-start marker becomes a space."""
        return self.pieces[token_id]
