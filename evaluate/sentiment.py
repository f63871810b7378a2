"""Sentiment with the ``sequence`` graph (a whole text) and the stream graph (a running probability per token):
``chunk``, several tokens of every stream per run, or version 1's ``step``, one."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from contract.manifest import Reference, SentimentPreprocessing
from contract.repository import Model
from contract.words import WordTokenizer, padded_groups

SEQUENCE = "sequence"
BATCH_TOKENS = 65_536  # padded tokens per run of the sequence graph, as the server's default max_batch_tokens


def preprocessing(model: Model) -> SentimentPreprocessing:
    return model.preprocessing(SentimentPreprocessing)


def tokenizer(model: Model) -> WordTokenizer:
    pre = preprocessing(model)
    return WordTokenizer(model.path / pre.vocabulary, pre.unk_id, pre.lowercase)


def sentiment_ids(model: Model, texts: list[str]) -> list[list[int]]:
    """Every token's id, as the server reads a text."""
    words = tokenizer(model)
    return [words.ids(words.tokens(text)) for text in texts]


def sentiment_probs(model: Model, texts: list[str], first: int | None = None) -> np.ndarray:
    """Class probabilities ``[N, labels]`` from the ``sequence`` graph over each whole text, as ``Classify`` reads
    it (or its ``first`` tokens only: what ``Classify`` read before issue 14), in runs of at most ``BATCH_TOKENS``
    padded tokens. A text without tokens reads as one unknown word; one over ``max_tokens`` is a ``ValueError``."""
    pre = preprocessing(model)
    encoded = [ids[:first] or [pre.unk_id] for ids in sentiment_ids(model, texts)]
    longest = max(map(len, encoded), default=0)
    if longest > pre.max_tokens:
        raise ValueError(f"{model.name}/{model.version}: a text has {longest} tokens, more than max_tokens "
                         f"{pre.max_tokens}")
    probs = np.zeros((len(texts), len(pre.labels)), dtype=np.float32)
    for group in padded_groups([len(ids) for ids in encoded], BATCH_TOKENS):
        lengths = np.array([len(encoded[i]) for i in group], dtype=np.int64)
        ids = np.full((len(group), int(lengths.max())), pre.pad_id, dtype=np.int64)
        for row, index in enumerate(group):
            ids[row, : lengths[row]] = encoded[index]
        probs[group] = model.sessions[SEQUENCE].run(["probs"], {"ids": ids, "lengths": lengths})[0]
    return probs


def sentiment_steps(model: Model, ids: list[list[int]]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The stream graph (``chunk``, or version 1's ``step``) over every stream at once, ``chunk_tokens`` tokens (one)
    per stream per run; a stream leaves the batch after its last token. Yields the rows (indices into ``ids``) of
    each run, their probabilities ``[rows, tokens, labels]``, right-padded, and how many of each row's are its
    own (``min(chunk_tokens, tokens left)``)."""
    if not ids:
        return
    pre = preprocessing(model)
    graph, width = pre.stream_graph, pre.chunk_tokens or 1
    session, specs = model.sessions[graph], model.manifest.state_of(graph)
    if any(isinstance(s.initial, Reference) for s in specs):
        raise ValueError(f"{model.name}/{model.version}: a sentiment stream state must start from a constant")
    lengths = np.array([len(row) for row in ids])
    tokens = np.full((len(ids), max(int(lengths.max()), 1)), pre.pad_id, dtype=np.int64)
    for row, stream in enumerate(ids):
        tokens[row, : len(stream)] = stream
    names = [o.name for o in session.get_outputs()]
    state = {s.input: np.full((len(ids), *s.shape), s.initial, dtype=s.dtype) for s in specs}
    rows = np.arange(len(ids))
    for start in range(0, int(lengths.max()), width):
        going = lengths[rows] > start
        if not going.all():
            rows, state = rows[going], {k: v[going] for k, v in state.items()}
        piece = np.minimum(lengths[rows] - start, width)
        feed = pre.stream_inputs(tokens[rows, start : start + int(piece.max())], piece)
        out = dict(zip(names, session.run(names, {**feed, **state}), strict=True))
        state = {s.input: out[s.output] for s in specs}
        yield rows, out["probs"].reshape(len(rows), -1, len(pre.labels)), piece


def sentiment_running(model: Model, texts: list[str]) -> list[np.ndarray]:
    """Per text, the probabilities after each of its tokens ``[tokens, labels]`` (``StreamSentiment``'s updates)."""
    ids = sentiment_ids(model, texts)
    labels = len(preprocessing(model).labels)
    running: list[list[np.ndarray]] = [[] for _ in ids]
    for rows, probs, counts in sentiment_steps(model, ids):
        for row, p, count in zip(rows.tolist(), probs, counts.tolist(), strict=True):
            running[row].extend(p[:count])
    return [np.array(r, dtype=np.float32).reshape(-1, labels) for r in running]
