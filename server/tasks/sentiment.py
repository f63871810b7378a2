"""Sentiment: ``classify`` runs the ``sequence`` graph over whole texts, a ``Stream`` the ``step`` graph token by token.

Both read a text's tokens the same way (``contract.words.whole_tokens``, ``IncrementalWords``) up to the
manifest's ``max_tokens``, so a whole-text classification equals the stream's last update.

A stream runs its chunks through the engine's scheduler, whose batches gather the runs of all open
streams: up to the manifest's ``chunk_tokens`` tokens per run through a ``chunk`` graph (version 2),
or one token per run through a ``step`` graph (version 1). It sends its updates ``most`` to a
message when asked to (``max_tokens_per_message``): the write of a message costs several times a
token's run (``bench/RESULTS.md``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.manifest import SentimentPreprocessing
from contract.words import IncrementalWords, WordTokenizer, padded_groups, whole_tokens
from server.config import Config
from server.engine import ModelRunner, gather_all
from server.errors import InputError, check_count, check_texts
from server.graph import Arrays, Holding, Lease

# A Classify request with more characters than this is tokenized in a thread, text by text, so that other calls go
# on meanwhile (tokenizing takes about 0.5 ms per 1,000 characters; docs/sentiment.md).
OFF_LOOP_CHARS = 16_384


@dataclass(frozen=True)
class Classification:
    probabilities: list[float]
    label: str
    tokens: int  # tokens read: all of the text's


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
        self.graph, self.piece = pre.stream_graph, pre.chunk_tokens or 1  # the stream graph, tokens per run
        self.tokenizer = WordTokenizer(runner.model.path / pre.vocabulary, pre.unk_id, pre.lowercase)

    async def classify(self, texts: list[str], field: str = "texts") -> list[Classification]:
        """Each whole text (at most ``max_texts`` of ``max_text_chars`` characters and the manifest's ``max_tokens``
        tokens) through the ``sequence`` graph; a request's texts by length in runs of at most ``max_batch_tokens``
        padded tokens."""
        check_texts(field, texts, self.config.max_texts, self.config.max_text_chars)
        ids = (await asyncio.to_thread(self.all_ids, field, texts) if sum(map(len, texts)) > OFF_LOOP_CHARS
               else self.all_ids(field, texts))
        results: dict[int, Classification] = {}
        for group in padded_groups([len(i) for i in ids], self.config.max_batch_tokens):
            results.update(zip(group, await gather_all(self._classify(ids[i]) for i in group), strict=True))
        return [results[index] for index in range(len(ids))]

    def all_ids(self, field: str, texts: list[str]) -> list[list[int]]:
        """The ids of each whole text's tokens; a text over the manifest's ``max_tokens`` is an ``InputError``."""
        ids = []
        for index, text in enumerate(texts):
            tokens = whole_tokens(self.tokenizer, text, self.config.max_token_chars)
            check_tokens(f"{field}[{index}]", len(tokens), self.pre.max_tokens)
            ids.append(self.tokenizer.ids(tokens))
        return ids

    async def _classify(self, ids: list[int]) -> Classification:
        out = await self.runner.run("sequence", {"ids": np.array([ids], dtype=np.int64),
                                                 "lengths": np.array([len(ids)], dtype=np.int64)})
        probs = out["probs"][0]
        return Classification(probs.tolist(), self.labels[int(np.argmax(probs))], len(ids))

    def stream(self) -> Stream:
        """A running classification, holding one state slot in its ``with`` block."""
        return Stream(self)

    def per_message(self, requested: int, field: str = "max_tokens_per_message") -> int:
        """Token updates per message that a stream asks for (0: one), at most the model's ``max_tokens``."""
        check_count(field, requested or 1, 1, self.pre.max_tokens)
        return requested or 1


def check_tokens(field: str, tokens: int, limit: int) -> None:
    if tokens > limit:
        raise InputError(f"{field} has {tokens} tokens, the limit is {limit} (the model's max_tokens)")


class Stream(Holding):
    """Text in chunks, one update per complete token; see ``IncrementalWords`` for when a token is complete."""

    __slots__ = ("position", "task", "words")

    def __init__(self, task: SentimentTask) -> None:
        self.task = task
        self.words = IncrementalWords(task.tokenizer, task.config.max_token_chars)
        self.position = 0

    def take(self) -> Lease:
        return self.task.runner.open(self.task.graph)

    def feed(self, chunk: str, field: str = "text", most: int = 0) -> AsyncIterator[list[TokenUpdate]]:
        """The updates of the tokens that ``chunk`` completes, ``most`` to a list (0: all in one) but the last;
        ``field`` names the chunk in errors."""
        limit = self.task.config.max_text_chars
        if len(chunk) > limit:
            raise InputError(f"{field} has {len(chunk)} characters, the limit is {limit} per chunk")
        return self._emit(self.words.feed(chunk), most)

    def finish(self, most: int = 0) -> AsyncIterator[list[TokenUpdate]]:
        return self._emit(self.words.flush(), most)

    def frozen(self) -> tuple[Arrays, dict[str, Any]]:
        """Between chunks: the state slot and where the stream is, for a resume token (``thaw`` takes them)."""
        where = {"position": self.position, "pending": self.words.pending, "skipping": self.words.skipping}
        return self.task.runner.pools[self.task.graph].snapshot(self.slots), where

    def thaw(self, state: Arrays, position: int, pending: str, skipping: bool) -> None:
        self.task.runner.pools[self.task.graph].restore(self.slots, state)
        self.position, self.words.pending, self.words.skipping = position, pending, skipping

    async def _emit(self, tokens: list[str], most: int) -> AsyncIterator[list[TokenUpdate]]:
        """One run per ``piece`` tokens (the manifest's ``chunk_tokens``, or one); the updates in lists of ``most``
        (0: the chunk's all)."""
        task = self.task
        check_tokens("text: the stream", self.position + len(tokens), task.pre.max_tokens)
        ids, updates = task.tokenizer.ids(tokens), []
        for start in range(0, len(tokens), task.piece):
            piece = ids[start : start + task.piece]
            inputs = task.pre.stream_inputs(np.array([piece], dtype=np.int64), np.array([len(piece)], dtype=np.int64))
            probs = (await task.runner.run(task.graph, inputs, self.slots))["probs"].reshape(len(piece), -1)
            for token, row in zip(tokens[start : start + task.piece], probs.tolist(), strict=True):
                updates.append(TokenUpdate(token, self.position, row))
                self.position += 1
                if len(updates) == (most or len(tokens)):
                    yield updates
                    updates = []
        if updates:
            yield updates
