"""Translation over an ``encoder`` graph and a ``decoder_step`` graph (``docs/translation.md``).

The decoder's state starts from the encoder's output and its context tensors (encoder outputs,
keys, mask) come from the encoder too; both are wired by the manifest. Greedy decoding runs in the
generation loop (``server/generation.py``); beam search steps ``width`` rows of one stream through
the per-step scheduler. The rules (source cut, output length, the greedy pick, the beam step) are
``contract/translation.py``, shared with training and the reference runtime.

A text is a ``Paragraph``: its sentences (``contract.segments.split_sentences``) are decoded at once,
each in its own stream slots, and come back in order; a sentence over the model's source limit is
refused, never cut. Each sentence's text has its copied spans (numbers, URLs, paths, code) restored
by ``contract.segments.restore_spans``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from contract.manifest import TranslationPreprocessing
from contract.segments import join_sentences, restore_spans, split_sentences
from contract.subword import Subwords
from contract.translation import Beam, greedy_tokens
from server.config import Config
from server.engine import ModelRunner, gather_all
from server.errors import InputError, check_count, check_text, check_texts, clip
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
    """How to decode one request: beam width (1 = greedy), the output cap, the length penalty, the most tokens
    a streamed update may carry and whether greedy tokens are held back to fill it (``fill_messages``)."""

    beam: int
    max_length: int
    length_penalty: float
    per_update: int
    fill: bool = False


@dataclass(frozen=True)
class Sentence:
    """One sentence of a text: its ``separator`` to the next (``contract.segments.split_sentences``), its encoder
    ids (pieces and ``source_suffix``) and each piece's character range."""

    text: str
    separator: str
    ids: list[int]
    offsets: list[tuple[int, int]]


@dataclass
class Paragraph:
    """A text to translate: its sentences, the stream slots of each, and the translations of those decoded so
    far (copied spans restored)."""

    sentences: list[Sentence]
    leases: list[Lease]
    texts: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        """The source ids of every sentence, one after the other: what each token's attention spans."""
        return [i for sentence in self.sentences for i in sentence.ids]

    def text(self) -> str:
        return join_sentences(self.texts, [s.separator for s in self.sentences[: len(self.texts)]])


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

    def decoding(self, beam: int, max_length: int, length_penalty: float, per_update: int, prefix: str = "",
                 fill: bool = False) -> Decoding:
        """The request's decoding options; unset (0) means the model's own. ``prefix`` names the fields."""
        check_count(f"{prefix}beam", beam or 1, 1, self.config.max_beam)
        check_count(f"{prefix}max_length", max_length or 1, 1, self.config.max_decode_len)
        check_count(f"{prefix}max_tokens_per_message", per_update or 1, 1, self.config.max_decode_len)
        penalty = length_penalty or self.pre.length_penalty
        if not math.isfinite(penalty) or penalty < 0:
            raise InputError(f"{prefix}length_penalty is {penalty}: it must be finite and not negative")
        return Decoding(beam or 1, max_length or min(self.pre.max_length, self.config.max_decode_len), penalty,
                        per_update or 1, fill)

    @contextmanager
    def stream(self, text: str, decoding: Decoding, field: str = "text") -> Iterator[Paragraph]:
        """The sentences of one text (within ``max_text_chars``) and their stream slots, as ``_admit``."""
        check_text(field, text, self.config.max_text_chars)
        sentences = self.sentences(text, field)
        with self._admit(len(sentences), decoding, field) as leases:
            yield Paragraph(sentences, leases)

    @contextmanager
    def resumed_stream(self, source: str, decoding: Decoding, field: str = "resume_token") -> Iterator[Paragraph]:
        """The one sentence of a translation resumed from a token (its text was checked when it began)."""
        sentences = self.sentences(source, field)
        if len(sentences) != 1:
            raise InputError(f"{field}: its source has {len(sentences)} sentences, a resumable translation one")
        with self._admit(1, decoding, field) as leases:
            yield Paragraph(sentences, leases)

    @contextmanager
    def batch(self, texts: list[str], decoding: Decoding, field: str = "texts") -> Iterator[list[Paragraph]]:
        """The sentences of several texts (``max_texts`` of ``max_text_chars``) and their stream slots, all at once,
        as ``_admit``."""
        check_texts(field, texts, self.config.max_texts, self.config.max_text_chars)
        split = [self.sentences(text, f"{field}[{index}]") for index, text in enumerate(texts)]
        with self._admit(sum(map(len, split)), decoding, field) as leases:
            starts = np.cumsum([0, *map(len, split)]).tolist()
            yield [Paragraph(s, leases[a:b]) for s, a, b in zip(split, starts[:-1], starts[1:], strict=True)]

    def sentences(self, text: str, field: str) -> list[Sentence]:
        """``text`` as sentences; one longer than the model's source limit is an ``InputError`` naming ``field``."""
        most = self.pre.output_length.max_length - len(self.pre.source_suffix)
        sentences = []
        for index, (sentence, separator) in enumerate(split_sentences(text)):
            pieces, offsets = self.tokenizer.encode_with_offsets(sentence)
            if len(pieces) > most:
                raise InputError(f"{field}: sentence {index + 1} ({clip(sentence)}) has {len(pieces)} subword pieces, "
                                 f"the model's limit is {most} per sentence")
            ids = self.pre.output_length.source(pieces, self.pre.source_suffix)
            sentences.append(Sentence(sentence, separator, ids, offsets))
        return sentences

    @contextmanager
    def _admit(self, count: int, decoding: Decoding, field: str) -> Iterator[list[Lease]]:
        """Stream slots for ``count`` sentences (``decoding.beam`` rows each), taken all at once or not at all and
        given back when the block ends: more than the model could ever hold is an ``InputError`` naming ``field``,
        more than are free now ``Overloaded``. A greedy translation gives its slot back once decoded."""
        slots = self.runner.graphs[STEP].slots
        rows = count * decoding.beam
        if rows > slots.capacity:
            raise InputError(f"{field}: {count} × beam {decoding.beam} = {rows} stream slots, more than the "
                             f"{slots.capacity} of {slots.owner} (max_streams)")
        with slots.lease(rows) as lease:
            yield lease.split(count)

    def decode(self, paragraph: Paragraph, decoding: Decoding, most: int
               ) -> tuple[list[int], AsyncIterator[list[Token]]]:
        """The source ids of every sentence and the output tokens (EOS not included), up to ``most`` per list: the
        sentences are decoded at once (in their slots from ``stream`` or ``batch``) and come out in order, each
        token's attention over all the source ids. ``paragraph.texts`` grows as sentences end."""
        streams = [self._decode(sentence.ids, decoding, lease, most)
                   for sentence, lease in zip(paragraph.sentences, paragraph.leases, strict=True)]
        return paragraph.ids, self._in_order(paragraph, streams)

    def _decode(self, ids: list[int], decoding: Decoding, lease: Lease, most: int) -> AsyncIterator[list[Token]]:
        inputs = {"encoder": {"src_ids": np.array([ids], dtype=np.int64),
                              "src_lengths": np.array([len(ids)], dtype=np.int64)}}
        limit = self.pre.output_length.limit(len(ids), decoding.max_length)
        if decoding.beam == 1:
            return self._greedy(inputs, limit, most, lease, decoding.fill)
        return self._at_the_end(self._beam(inputs, limit, decoding.beam, decoding.length_penalty, lease), most)

    async def _in_order(self, paragraph: Paragraph, streams: list[AsyncIterator[list[Token]]]
                        ) -> AsyncIterator[list[Token]]:
        """The tokens of every stream, decoded concurrently and yielded stream by stream; at the end of each, its
        sentence's text (spans restored) goes to ``paragraph.texts``. Ending early cancels the others. One sentence
        (most texts) is read directly: no task and no queue hop per token on the streaming hot path."""
        if len(streams) == 1:
            found: list[Token] = []
            async with aclosing(streams[0]) as stream:
                async for tokens in stream:
                    found += tokens
                    yield tokens
            paragraph.texts.append(self._restored(paragraph.sentences[0], found))
            return
        queues: list[asyncio.Queue[list[Token] | Exception | None]] = [asyncio.Queue() for _ in streams]

        async def pump(stream: AsyncIterator[list[Token]], queue: asyncio.Queue[list[Token] | Exception | None]
                       ) -> None:
            """The stream's lists into ``queue``, then None, or its failure (the reader raises it)."""
            try:
                async for tokens in stream:
                    queue.put_nowait(tokens)
            except Exception as error:  # handed to the reader, which raises it
                queue.put_nowait(error)
                return
            queue.put_nowait(None)

        tasks = [asyncio.ensure_future(pump(s, q)) for s, q in zip(streams, queues, strict=True)]
        total, start = len(paragraph.ids), 0
        try:
            for sentence, queue in zip(paragraph.sentences, queues, strict=True):
                found: list[Token] = []
                while (tokens := await queue.get()) is not None:
                    if isinstance(tokens, Exception):
                        raise tokens
                    found += tokens
                    yield [Token(t.token_id, t.log_prob, _placed(t.attention[: len(sentence.ids)], start, total))
                           for t in tokens]
                paragraph.texts.append(self._restored(sentence, found))
                start += len(sentence.ids)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _restored(self, sentence: Sentence, tokens: list[Token]) -> str:
        """The translation of ``sentence`` that ``tokens`` spell, its copied spans restored by their attention."""
        pieces = [self.tokenizer.processor.id_to_piece(t.token_id) for t in tokens]
        width = len(sentence.ids)
        alignment = np.stack([t.attention[:width] for t in tokens]).argmax(axis=1).tolist() if tokens else []
        return restore_spans(sentence.text, sentence.offsets, pieces, alignment)

    def resume(self, paragraph: Paragraph, sent: list[int], decoding: Decoding
               ) -> tuple[list[int], AsyncIterator[list[Token]]]:
        """A one-sentence greedy translation continued after the tokens ``sent``, in its lease's row: the decoder reads
        the sent tokens again (teacher-forced), then picks as ``decode`` does, one token per list. At the end the
        sentence's text (spans restored, the sent tokens included) goes to ``paragraph.texts``."""
        [sentence], [lease] = paragraph.sentences, paragraph.leases
        inputs = {"src_ids": np.array([sentence.ids], dtype=np.int64),
                  "src_lengths": np.array([len(sentence.ids)], dtype=np.int64)}
        limit = self.pre.output_length.limit(len(sentence.ids), decoding.max_length)
        return sentence.ids, self._replayed(paragraph, inputs, limit, sent, lease)

    async def _replayed(self, paragraph: Paragraph, inputs: Arrays, limit: int, sent: list[int], lease: Lease
                        ) -> AsyncIterator[list[Token]]:
        sources = {"encoder": await self.runner.run("encoder", inputs)}
        context = self.runner.graphs[STEP].stream_context(sources)
        prev = np.array([self.pre.bos_id], dtype=np.int64)
        found: list[Token] = []
        with self.runner.state(STEP, lease, sources):
            for t in range(limit):
                out = await self.runner.run(STEP, {"prev_tokens": prev, **context}, lease.rows)
                if t < len(sent):
                    found.append(Token(sent[t], 0.0, out["attention"][0]))
                    prev = np.array([sent[t]], dtype=np.int64)
                    continue
                picked, [token], done = self.pick(out, np.array([t]), np.array([limit]))
                if done[0]:
                    break
                found.append(token)
                yield [token]
                prev = picked["prev_tokens"]
        paragraph.texts.append(self._restored(paragraph.sentences[0], found))

    async def translate(self, paragraphs: list[Paragraph], decoding: Decoding) -> list[Translated]:
        """Whole translations; on a failure every other one is cancelled and its slots freed."""
        return await gather_all(self._translate(paragraph, decoding) for paragraph in paragraphs)

    async def _translate(self, paragraph: Paragraph, decoding: Decoding) -> Translated:
        _, chunks = self.decode(paragraph, replace(decoding, fill=True), self.config.max_decode_len)
        tokens = [t async for chunk in chunks for t in chunk]
        return Translated(paragraph.text(), [t.token_id for t in tokens], sum(t.log_prob for t in tokens))

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

    async def _greedy(self, inputs: dict[str, Arrays], limit: int, most: int, lease: Lease, fill: bool
                      ) -> AsyncIterator[list[Token]]:
        start = {"prev_tokens": np.array([self.pre.bos_id], dtype=np.int64)}
        with self.generator.open(inputs, start, limit, lease) as sequence:
            async for tokens in sequence.chunks(most, fill):
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
        with self.runner.state(STEP, lease, sources):
            for t in range(limit):
                out = await self.runner.run(STEP, {"prev_tokens": prev, **context}, lease.rows)
                finished = beam.finished
                origin, token, chosen = beam.advance(out["log_probs"], t + 1 >= limit)
                hypotheses = [hypotheses[o] + ([] if finished[o] else [Token(int(k), float(p), out["attention"][o])])
                              for o, k, p in zip(origin, token, chosen, strict=True)]
                self.runner.pools[STEP].reorder(lease.rows, origin)
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


def _placed(attention: np.ndarray, start: int, total: int) -> np.ndarray:
    """A sentence's attention at its place among all the paragraph's source ids (zero elsewhere)."""
    placed = np.zeros(total, dtype=attention.dtype)
    placed[start : start + len(attention)] = attention
    return placed
