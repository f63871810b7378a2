"""The sentiment tokenizer: a regular expression over lower-cased text, and a vocabulary.

Training builds the vocabulary with ``tokenize``; export saves it with the pattern as JSON
(``vocab.json``); the server and the reference runtime read it back with ``WordTokenizer``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TOKEN_PATTERN = r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]"
# Tokens of one text that a sentiment model reads, Classify and StreamSentiment alike: export writes it into
# the manifest (``preprocessing.max_tokens``). A 50,000-character review has about 9,000; docs/sentiment.md has
# the accuracy by length and the cost of such a text.
MAX_TOKENS = 12_000
WHITESPACE = re.compile(r"\s")


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
        self.longest = max(map(len, self.index), default=0)  # characters of the longest vocabulary word

    def normalize(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def tokens(self, text: str) -> list[str]:
        return self.pattern.findall(self.normalize(text))

    def ids(self, tokens: list[str]) -> list[int]:
        return [self.index.get(token, self.unk_id) for token in tokens]


def whole_tokens(tokenizer: WordTokenizer, text: str, limit: int) -> list[str]:
    """The tokens of a whole text as ``IncrementalWords`` emits them in any chunking (a token over ``limit``
    characters cut), so that a whole-text score equals the stream's last one."""
    words = IncrementalWords(tokenizer, limit)
    return words.feed(text) + words.flush()


def padded_groups(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of ``lengths`` from the shortest, cut into groups whose size times their longest length stays
    within ``budget`` (a group of one may exceed it)."""
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and (len(groups[-1]) + 1) * lengths[index] <= budget:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


class IncrementalWords:
    """Tokens of a text that arrives in chunks, emitted only once no later chunk can change them.

    A match is held while it touches the end of the text read so far (``grea`` may become
    ``great``), and so is a word followed only by an apostrophe (``it'`` may become ``it's``).
    Chunks are lower-cased one by one (exact for all but context-dependent letters like final sigma).

    No token spans whitespace and every other character belongs to a token (the pattern ends in a
    catch-all ``[^\\s…]``), so only the text after the last whitespace or emitted token is held.
    A token longer than ``limit`` characters (longer than any vocabulary word: it reads as unknown)
    is emitted as its first ``limit`` characters and ``…``, as soon as it passes the limit, and the
    rest of its run of non-whitespace characters is skipped. So the held text stays within ``limit``
    characters (and an apostrophe), a chunk costs time in proportion to its length plus ``limit``,
    and the emitted tokens always equal those of the whole text read with the same cut.
    """

    __slots__ = ("limit", "pending", "skipping", "tokenizer")  # a stream keeps one while idle

    def __init__(self, tokenizer: WordTokenizer, limit: int) -> None:
        if limit <= tokenizer.longest:
            raise ValueError(f"a token limit of {limit} characters would cut vocabulary words "
                             f"(the longest has {tokenizer.longest})")
        self.tokenizer, self.limit = tokenizer, limit
        self.pending = ""  # normalized text that a later chunk may still extend
        self.skipping = False  # after a cut token, until the next whitespace

    def feed(self, chunk: str) -> list[str]:
        chunk = self.tokenizer.normalize(chunk)
        if self.skipping:
            space = WHITESPACE.search(chunk)
            if space is None:
                return []
            chunk, self.skipping = chunk[space.start() :], False
        text = self.pending + chunk
        matches = list(self.tokenizer.pattern.finditer(text))
        size, apostrophe = len(text), text.endswith("'")
        held = len(matches)
        while held and (matches[held - 1].end() == size or (apostrophe and matches[held - 1].end() == size - 1
                                                              and "'" not in matches[held - 1].group())):
            held -= 1
        tokens = self._take(text, matches[:held])
        if self.skipping:
            self.pending = ""
        elif held < len(matches) and len(matches[held].group()) > self.limit:  # a held token passed the limit
            tokens.append(self._cut(matches[held].group()))
            self.pending, self.skipping = "", True
        else:
            rest = text[matches[held - 1].end() if held else 0 :]
            self.pending = "" if not rest or rest[-1].isspace() else rest.rsplit(None, 1)[-1]
        return tokens

    def flush(self) -> list[str]:
        """The held tokens, once the text has ended."""
        tokens = self._take(self.pending, list(self.tokenizer.pattern.finditer(self.pending)))
        self.pending, self.skipping = "", False
        return tokens

    def _take(self, text: str, done: list[re.Match]) -> list[str]:
        """The tokens of ``done``, each overlong one cut and the rest of its run skipped (to the end of
        ``text``: ``skipping`` is then set)."""
        tokens, resume = [], 0
        for match in done:
            if match.start() < resume:
                continue
            token = match.group()
            if len(token) > self.limit:
                token = self._cut(token)
                space = WHITESPACE.search(text, match.end())
                if space is None:
                    self.skipping = True
                    return [*tokens, token]
                resume = space.start()
            tokens.append(token)
        return tokens

    def _cut(self, token: str) -> str:
        return token[: self.limit] + "…"
