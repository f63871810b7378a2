"""Translation RPCs over an ``encoder`` graph and a ``decoder_step`` graph (``docs/translation.md``).

The decoder's state starts from the encoder's output and its context tensors (encoder outputs,
keys, mask) come from the encoder too; both are wired by the manifest, so this module only
tokenizes, picks tokens and formats them. Decoding repeats ``training/seq2seq.py`` with the
manifest's ``preprocessing``: the source is ``(pieces + source_suffix)[:max_length]``, the output
at most ``min(2 × source tokens + 10, max_length)`` tokens (EOS included), beam hypotheses ranked
by ``log p / ((5 + length) / 6) ** length_penalty``, a finished hypothesis only extends with EOS.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from server.config import Config
from server.engine import Arrays, ModelRunner
from protos.seqserve.v1 import translate_pb2 as pb
from protos.seqserve.v1 import translate_pb2_grpc
from server.generation import Generator
from server.metrics import Metrics
from server.rpc import Call, Runners, check_count, check_text, invalid, resolve, rpc
from server.subword import SubwordBPE

STEP = "decoder_step"


@dataclass
class Token:
    token_id: int
    log_prob: float
    attention: np.ndarray


class Translator:
    """One translation model version: its tokenizer, special ids and decoding loops."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        pre = runner.model.manifest["preprocessing"]
        self.tokenizer = SubwordBPE(runner.model.path / pre["subwords"])
        self.bos, self.eos, self.suffix = pre["bos_id"], pre["eos_id"], pre["source_suffix"]
        self.max_length, self.length_penalty = pre["max_length"], pre["length_penalty"]
        self.generator = Generator(runner, STEP, ["log_probs", "attention"], self.pick)
        runner.generators.append(self.generator)

    def source(self, text: str) -> tuple[list[int], dict[str, Arrays]]:
        """The source ids and the encoder's inputs for them."""
        ids = [*self.tokenizer.encode(text), *self.suffix][: self.max_length]
        return ids, {"encoder": {"src_ids": np.array([ids], dtype=np.int64),
                                 "src_lengths": np.array([len(ids)], dtype=np.int64)}}

    def pick(self, outputs: Arrays, steps: np.ndarray, limits: np.ndarray
             ) -> tuple[Arrays, list[Token | None], np.ndarray]:
        """In the generator's thread: every row's most likely token, EOS at its last step (EOS not emitted)."""
        log_probs = outputs["log_probs"]
        tokens = np.where(steps + 1 < limits, log_probs.argmax(-1), self.eos)
        done = tokens == self.eos
        chosen = log_probs[np.arange(len(tokens)), tokens].tolist()
        results = [None if end else Token(token, log_prob, attention)
                   for token, log_prob, attention, end in zip(tokens.tolist(), chosen, outputs["attention"],
                                                              done.tolist(), strict=True)]
        return {"prev_tokens": tokens.astype(np.int64)}, results, done

    async def greedy(self, inputs: dict[str, Arrays], limit: int, most: int) -> AsyncIterator[list[Token]]:
        """Tokens as they are decoded, up to ``most`` per list (EOS not included); the generator encodes."""
        with self.generator.open(inputs, {"prev_tokens": np.array([self.bos], dtype=np.int64)}, limit) as sequence:
            async for tokens in sequence.chunks(most):
                yield tokens

    async def beam(self, inputs: dict[str, Arrays], limit: int, width: int, penalty: float) -> list[Token]:
        """The best hypothesis of a beam search over ``width`` rows of state (EOS not included)."""
        sources = {"encoder": await self.runner.run("encoder", inputs["encoder"])}
        context = self.runner.context(STEP, sources)
        scores = np.full(width, -np.inf)
        scores[0] = 0.0  # all rows start identical: expand only the first
        lengths, finished = np.zeros(width), np.zeros(width, dtype=bool)
        prev = np.full(width, self.bos, dtype=np.int64)
        hypotheses: list[list[Token]] = [[] for _ in range(width)]
        with self.runner.open(STEP, width, sources) as slots:
            for t in range(limit):
                out = await self.runner.run(STEP, {"prev_tokens": prev}, slots, context)
                log_probs = out["log_probs"].astype(np.float64)
                only_eos = np.full_like(log_probs, -np.inf)
                only_eos[:, self.eos] = 0.0
                if t + 1 >= limit:
                    log_probs = log_probs[:, self.eos : self.eos + 1] + only_eos
                log_probs = np.where(finished[:, None], only_eos, log_probs)
                candidates = scores[:, None] + log_probs
                new_lengths = np.where(finished, lengths, lengths + 1)
                ranked = candidates / (((5.0 + new_lengths) / 6.0) ** penalty)[:, None]
                flat = np.argsort(-ranked.ravel(), kind="stable")[:width]
                origin, token = np.divmod(flat, log_probs.shape[1])
                hypotheses = [hypotheses[o] + ([] if finished[o] else [Token(int(k), float(log_probs[o, k]),
                                                                             out["attention"][o])])
                              for o, k in zip(origin, token, strict=True)]
                scores, lengths = candidates.ravel()[flat], new_lengths[origin]
                finished = finished[origin] | (token == self.eos)
                self.runner.pools[STEP].reorder(slots, origin)
                prev = token.astype(np.int64)
                if finished.all():
                    break
        best = hypotheses[0]
        return best[:-1] if best and best[-1].token_id == self.eos else best


class TranslationService(translate_pb2_grpc.TranslationServicer):
    def __init__(self, runners: Runners, config: Config, metrics: Metrics) -> None:
        self.runners, self.config, self.metrics = runners, config, metrics
        self.translators = {id(r): Translator(r) for versions in runners.values() for r in versions.values()
                            if r.model.task == "translation"}

    def _options(self, translator: Translator, options: pb.DecodeOptions) -> tuple[int, int, float]:
        """Beam width, output length cap and length penalty; unset (0) means the model's own."""
        check_count("options.beam", options.beam or 1, 1, self.config.max_beam)
        check_count("options.max_length", options.max_length or 1, 1, self.config.max_decode_len)
        penalty = options.length_penalty or translator.length_penalty
        if not math.isfinite(penalty) or penalty < 0:
            raise invalid(f"options.length_penalty is {penalty}: it must be finite and not negative")
        max_length = options.max_length or min(translator.max_length, self.config.max_decode_len)
        return options.beam or 1, max_length, penalty

    def _decode(self, translator: Translator, text: str, options: pb.DecodeOptions, most: int = 1
                ) -> tuple[list[int], AsyncIterator[list[Token]]]:
        """The source ids and the output tokens, up to ``most`` per list."""
        beam, max_length, penalty = self._options(translator, options)
        ids, inputs = translator.source(text)
        limit = min(2 * len(ids) + 10, max_length)
        if beam == 1:
            return ids, translator.greedy(inputs, limit, most)

        async def at_the_end() -> AsyncIterator[list[Token]]:
            tokens = await translator.beam(inputs, limit, beam, penalty)
            for start in range(0, len(tokens), most):
                yield tokens[start : start + most]

        return ids, at_the_end()

    @rpc("Translate")
    async def Translate(self, request: pb.TranslateRequest, context, call: Call) -> None:
        runner = call.use(resolve(self.runners, request.model, "translation"))
        check_text("text", request.text, self.config.max_text_chars)
        most = request.options.max_tokens_per_message or 1
        check_count("options.max_tokens_per_message", most, 1, self.config.max_decode_len)
        translator = self.translators[id(runner)]
        call.stream_opened()
        ids, chunks = self._decode(translator, request.text, request.options, most)
        piece = translator.tokenizer.piece
        source = [piece(i) for i in ids]
        async for tokens in chunks:
            await context.write(pb.TranslateUpdate(
                tokens=[pb.TranslateToken(piece=piece(t.token_id), token_id=t.token_id, log_prob=t.log_prob,
                                          attention=t.attention[: len(ids)].tolist()) for t in tokens],
                source_tokens=source))
            source = []
            call.emitted(len(tokens))

    @rpc("TranslateBatch")
    async def TranslateBatch(self, request: pb.TranslateBatchRequest, context, call: Call
                             ) -> pb.TranslateBatchResponse:
        runner = call.use(resolve(self.runners, request.model, "translation"))
        check_count("texts (their number)", len(request.texts), 1, self.config.max_texts)
        for index, text in enumerate(request.texts):
            check_text(f"texts[{index}]", text, self.config.max_text_chars)
        translator = self.translators[id(runner)]

        async def one(text: str) -> pb.Translated:
            _, chunks = self._decode(translator, text, request.options, self.config.max_decode_len)
            decoded = [t async for tokens in chunks for t in tokens]
            ids = [t.token_id for t in decoded]
            return pb.Translated(text=translator.tokenizer.decode(ids), token_ids=ids,
                                 log_prob=sum(t.log_prob for t in decoded))

        translations = await asyncio.gather(*(one(text) for text in request.texts))
        call.emitted(len(translations))
        return pb.TranslateBatchResponse(translations=translations)
