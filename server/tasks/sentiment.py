"""Sentiment: ``classify`` runs the ``sequence`` graph over a text, a ``Stream`` the ``step`` graph token by token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.manifest import SentimentPreprocessing
from contract.words import IncrementalWords, WordTokenizer
from server.config import Config
from server.engine import ModelRunner, gather_all
from server.errors import InputError, check_texts
from server.graph import Arrays


@dataclass(frozen=True)
class Classification:
    probabilities: list[float]
    label: str
    tokens: int  # tokens read
    truncated: bool  # the text had more than ``max_tokens``


@dataclass(frozen=True)
class TokenUpdate:
    token: str
    position: int
    probabilities: list[float]  # the running probability of each label after this token


class SentimentTask:
    workers: tuple = ()

    def __init__(self, runner: ModelRunner, config: Config) -> None:
        self.runner, self.config = runner, config
        pre: SentimentPreprocessing = runner.model.manifest.preprocessing
        self.pre = pre
        self.labels = list(pre.labels)
        self.tokenizer = WordTokenizer(runner.model.path / pre.vocabulary, pre.unk_id, pre.lowercase)

    async def classify(self, texts: list[str], field: str = "texts") -> list[Classification]:
        """Each text (at most ``max_texts`` of ``max_text_chars``) as in training: its first ``max_tokens`` tokens
        through the ``sequence`` graph."""
        check_texts(field, texts, self.config.max_texts, self.config.max_text_chars)
        return await gather_all(self._classify(text) for text in texts)

    async def _classify(self, text: str) -> Classification:
        ids = self.tokenizer.ids(self.tokenizer.tokens(text))
        kept = ids[: self.pre.max_tokens]
        out = await self.runner.run("sequence", {"ids": np.array([kept], dtype=np.int64),
                                                 "lengths": np.array([len(kept)], dtype=np.int64)})
        probs = out["probs"][0]
        return Classification(probs.tolist(), self.labels[int(np.argmax(probs))], len(kept), len(ids) > len(kept))

    @contextmanager
    def stream(self) -> Iterator[Stream]:
        """A running classification holding one state slot until the block ends."""
        with self.runner.open("step") as slots:
            yield Stream(self, slots)


class Stream:
    """Text in chunks, one update per complete token; see ``IncrementalWords`` for when a token is complete."""

    def __init__(self, task: SentimentTask, slots: np.ndarray) -> None:
        self.task, self.slots = task, slots
        self.words = IncrementalWords(task.tokenizer, task.config.max_token_chars)
        self.position = 0

    def feed(self, chunk: str, field: str = "text") -> AsyncIterator[TokenUpdate]:
        """The updates of the tokens that ``chunk`` completes; ``field`` names it in errors."""
        limit = self.task.config.max_text_chars
        if len(chunk) > limit:
            raise InputError(f"{field} has {len(chunk)} characters, the limit is {limit} per chunk")
        return self._emit(self.words.feed(chunk))

    def finish(self) -> AsyncIterator[TokenUpdate]:
        return self._emit(self.words.flush())

    def frozen(self) -> tuple[Arrays, dict[str, Any]]:
        """Between chunks: the state slot and where the stream is, for a resume token (``thaw`` takes them)."""
        where = {"position": self.position, "pending": self.words.pending, "skipping": self.words.skipping}
        return self.task.runner.pools["step"].snapshot(self.slots), where

    def thaw(self, state: Arrays, position: int, pending: str, skipping: bool) -> None:
        self.task.runner.pools["step"].restore(self.slots, state)
        self.position, self.words.pending, self.words.skipping = position, pending, skipping

    async def _emit(self, tokens: list[str]) -> AsyncIterator[TokenUpdate]:
        limit = self.task.config.max_stream_tokens
        if self.position + len(tokens) > limit:
            raise InputError(f"text: the stream exceeds {limit} tokens (max_stream_tokens)")
        for token, token_id in zip(tokens, self.task.tokenizer.ids(tokens), strict=True):
            out = await self.task.runner.run("step", {"ids": np.array([token_id], dtype=np.int64)}, self.slots)
            yield TokenUpdate(token, self.position, out["probs"][0].tolist())
            self.position += 1
