"""Translation over an ``encoder`` graph and a ``decoder_step`` graph (``docs/translation.md``).

The decoder's state starts from the encoder's output and its context tensors (encoder outputs,
keys, mask) come from the encoder too; both are wired by the manifest. Greedy decoding runs in the
generation loop (``server/generation.py``); beam search steps ``width`` rows of one stream through
the per-step scheduler. The rules (source cut, output length, the greedy pick, the beam step) are
``contract/translation.py``, shared with training and the reference runtime.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from contract.manifest import TranslationPreprocessing
from contract.subword import Subwords
from contract.translation import Beam, greedy_tokens
from server.config import Config
from server.engine import ModelRunner, gather_all
from server.errors import InputError, check_count, check_text, check_texts
from server.generation import Generator
from server.graph import Arrays, Lease

STEP = "decoder_step"


@dataclass
class Token:
    token_id: int
    log_prob: float
    attention: np.ndarray  # over the source tokens (padding included: cut it with the source's length)


@dataclass(frozen=True)
class Decoding:
    """How to decode one request: beam width (1 = greedy), the output cap, the length penalty and the most tokens
    a streamed update may carry."""

    beam: int
    max_length: int
    length_penalty: float
    per_update: int


@dataclass(frozen=True)
class Translated:
    text: str
    token_ids: list[int]
    log_prob: float


class TranslationTask:
    def __init__(self, runner: ModelRunner, config: Config) -> None:
        self.runner, self.config = runner, config
        self.pre: TranslationPreprocessing = runner.model.manifest.preprocessing
        self.tokenizer = Subwords(runner.model.path / self.pre.subwords)
        sources = {name: runner.graphs[name] for name in runner.model.manifest.sources_of(STEP)}
        self.generator = Generator(runner.graphs[STEP], sources, ["log_probs", "attention"], self.pick)
        self.workers = (self.generator,)

    def decoding(self, beam: int, max_length: int, length_penalty: float, per_update: int, prefix: str = ""
                 ) -> Decoding:
        """The request's decoding options; unset (0) means the model's own. ``prefix`` names the fields."""
        check_count(f"{prefix}beam", beam or 1, 1, self.config.max_beam)
        check_count(f"{prefix}max_length", max_length or 1, 1, self.config.max_decode_len)
        check_count(f"{prefix}max_tokens_per_message", per_update or 1, 1, self.config.max_decode_len)
        penalty = length_penalty or self.pre.length_penalty
        if not math.isfinite(penalty) or penalty < 0:
            raise InputError(f"{prefix}length_penalty is {penalty}: it must be finite and not negative")
        return Decoding(beam or 1, max_length or min(self.pre.max_length, self.config.max_decode_len), penalty,
                        per_update or 1)

    @contextmanager
    def stream(self, text: str, decoding: Decoding, field: str = "text") -> Iterator[Lease]:
        """The stream slots of one translation (``text`` within ``max_text_chars``), as ``_admit``."""
        check_text(field, text, self.config.max_text_chars)
        with self._admit(1, decoding, field) as [lease]:
            yield lease

    @contextmanager
    def batch(self, texts: list[str], decoding: Decoding, field: str = "texts") -> Iterator[list[Lease]]:
        """The stream slots of several translations (``max_texts`` of ``max_text_chars``), all at once, as
        ``_admit``."""
        check_texts(field, texts, self.config.max_texts, self.config.max_text_chars)
        with self._admit(len(texts), decoding, field) as leases:
            yield leases

    @contextmanager
    def _admit(self, count: int, decoding: Decoding, field: str) -> Iterator[list[Lease]]:
        """Stream slots for ``count`` translations (``decoding.beam`` rows each), taken all at once or not at all and
        given back when the block ends: more than the model could ever hold is an ``InputError`` naming ``field``,
        more than are free now ``Overloaded``. A greedy translation gives its slot back once decoded."""
        slots = self.runner.graphs[STEP].slots
        rows = count * decoding.beam
        if rows > slots.capacity:
            raise InputError(f"{field}: {count} × beam {decoding.beam} = {rows} stream slots, more than the "
                             f"{slots.capacity} of {slots.owner} (max_streams)")
        with slots.lease(rows) as lease:
            yield lease.split(count)

    @contextmanager
    def resumed_stream(self, decoding: Decoding, field: str = "resume_token") -> Iterator[Lease]:
        """The stream slot of a translation resumed from a token (its text was checked when it began)."""
        with self._admit(1, decoding, field) as [lease]:
            yield lease

    def source(self, text: str) -> list[int]:
        return self.pre.output_length.source(self.tokenizer.encode(text), self.pre.source_suffix)

    def decode(self, text: str, decoding: Decoding, lease: Lease, most: int
               ) -> tuple[list[int], AsyncIterator[list[Token]]]:
        """The source ids and the output tokens (EOS not included), up to ``most`` per list, decoded in the rows of
        ``lease`` (from ``stream`` or ``batch``)."""
        ids = self.source(text)
        inputs = {"encoder": {"src_ids": np.array([ids], dtype=np.int64),
                              "src_lengths": np.array([len(ids)], dtype=np.int64)}}
        limit = self.pre.output_length.limit(len(ids), decoding.max_length)
        if decoding.beam == 1:
            return ids, self._greedy(inputs, limit, most, lease)
        return ids, self._at_the_end(self._beam(inputs, limit, decoding.beam, decoding.length_penalty, lease), most)

    def resume(self, ids: list[int], sent: list[int], decoding: Decoding, lease: Lease) -> AsyncIterator[list[Token]]:
        """A greedy translation of source ``ids`` continued after the tokens ``sent``, in ``lease``'s row: the
        decoder reads the sent tokens again (teacher-forced), then picks as ``decode`` does, one token per list."""
        inputs = {"src_ids": np.array([ids], dtype=np.int64), "src_lengths": np.array([len(ids)], dtype=np.int64)}
        return self._replayed(inputs, self.pre.output_length.limit(len(ids), decoding.max_length), sent, lease)

    async def _replayed(self, inputs: Arrays, limit: int, sent: list[int], lease: Lease
                        ) -> AsyncIterator[list[Token]]:
        sources = {"encoder": await self.runner.run("encoder", inputs)}
        context = self.runner.graphs[STEP].stream_context(sources)
        prev = np.array([self.pre.bos_id], dtype=np.int64)
        with self.runner.state(STEP, lease, sources) as slots:
            for t in range(limit):
                out = await self.runner.run(STEP, {"prev_tokens": prev, **context}, slots)
                if t < len(sent):
                    prev = np.array([sent[t]], dtype=np.int64)
                    continue
                picked, [token], done = self.pick(out, np.array([t]), np.array([limit]))
                if done[0]:
                    return
                yield [token]
                prev = picked["prev_tokens"]

    async def translate(self, texts: list[str], decoding: Decoding, leases: list[Lease]) -> list[Translated]:
        """Whole translations; on a failure every other one is cancelled and its slots freed."""
        pairs = zip(texts, leases, strict=True)
        return await gather_all(self._translate(text, decoding, lease) for text, lease in pairs)

    async def _translate(self, text: str, decoding: Decoding, lease: Lease) -> Translated:
        _, chunks = self.decode(text, decoding, lease, self.config.max_decode_len)
        tokens = [t async for chunk in chunks for t in chunk]
        ids = [t.token_id for t in tokens]
        return Translated(self.tokenizer.decode(ids), ids, sum(t.log_prob for t in tokens))

    def pick(self, outputs: Arrays, steps: np.ndarray, limits: np.ndarray
             ) -> tuple[Arrays, list[Token | None], np.ndarray]:
        """In the generator's thread: every row's greedy token; EOS ends the row and is not emitted."""
        log_probs = outputs["log_probs"]
        tokens = greedy_tokens(log_probs, steps, limits, self.pre.eos_id)
        done = tokens == self.pre.eos_id
        chosen = log_probs[np.arange(len(tokens)), tokens].tolist()
        results = [None if end else Token(token, log_prob, attention)
                   for token, log_prob, attention, end in zip(tokens.tolist(), chosen, outputs["attention"],
                                                              done.tolist(), strict=True)]
        return {"prev_tokens": tokens.astype(np.int64)}, results, done

    async def _greedy(self, inputs: dict[str, Arrays], limit: int, most: int, lease: Lease
                      ) -> AsyncIterator[list[Token]]:
        start = {"prev_tokens": np.array([self.pre.bos_id], dtype=np.int64)}
        with self.generator.open(inputs, start, limit, lease) as sequence:
            async for tokens in sequence.chunks(most):
                yield tokens

    async def _beam(self, inputs: dict[str, Arrays], limit: int, width: int, penalty: float, lease: Lease
                    ) -> list[Token]:
        """The best hypothesis of a beam search over ``width`` rows of state."""
        sources = {"encoder": await self.runner.run("encoder", inputs["encoder"])}
        context = {name: np.repeat(row, width, axis=0)
                   for name, row in self.runner.graphs[STEP].stream_context(sources).items()}
        beam = Beam(width, self.pre.eos_id, penalty)
        prev = np.full(width, self.pre.bos_id, dtype=np.int64)
        hypotheses: list[list[Token]] = [[] for _ in range(width)]
        with self.runner.state(STEP, lease, sources) as slots:
            for t in range(limit):
                out = await self.runner.run(STEP, {"prev_tokens": prev, **context}, slots)
                finished = beam.finished
                origin, token, chosen = beam.advance(out["log_probs"], t + 1 >= limit)
                hypotheses = [hypotheses[o] + ([] if finished[o] else [Token(int(k), float(p), out["attention"][o])])
                              for o, k, p in zip(origin, token, chosen, strict=True)]
                self.runner.pools[STEP].reorder(slots, origin)
                prev = token.astype(np.int64)
                if beam.done:
                    break
        best = hypotheses[0]
        return best[:-1] if best and best[-1].token_id == self.pre.eos_id else best

    @staticmethod
    async def _at_the_end(tokens: Awaitable[list[Token]], most: int) -> AsyncIterator[list[Token]]:
        """A beam search's tokens once it has ended, ``most`` per list."""
        found = await tokens
        for start in range(0, len(found), most):
            yield found[start : start + most]
