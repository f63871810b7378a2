"""Sentiment RPCs: ``Classify`` runs the ``sequence`` graph, ``StreamSentiment`` the ``step`` graph."""

from __future__ import annotations

import asyncio

import numpy as np

from server.config import Config
from server.engine import ModelRunner
from protos.seqserve.v1 import sentiment_pb2 as pb
from protos.seqserve.v1 import sentiment_pb2_grpc
from server.metrics import Metrics
from server.rpc import Call, Runners, check_count, check_text, invalid, read, resolve, rpc
from server.tokenizers import IncrementalWords, WordTokenizer


class SentimentService(sentiment_pb2_grpc.SentimentServicer):
    def __init__(self, runners: Runners, config: Config, metrics: Metrics) -> None:
        self.runners, self.config, self.metrics = runners, config, metrics
        self.tokenizers = {id(r): WordTokenizer(r.model.path, r.model.manifest["preprocessing"])
                           for versions in runners.values() for r in versions.values() if r.model.task == "sentiment"}

    @rpc("Classify")
    async def Classify(self, request: pb.ClassifyRequest, context, call: Call) -> pb.ClassifyResponse:
        runner = call.use(resolve(self.runners, request.model, "sentiment"))
        check_count("texts (their number)", len(request.texts), 1, self.config.max_texts)
        for index, text in enumerate(request.texts):
            check_text(f"texts[{index}]", text, self.config.max_text_chars)
        results = await asyncio.gather(*(self._classify(runner, text) for text in request.texts))
        call.emitted(len(results))
        preprocessing = runner.model.manifest["preprocessing"]
        return pb.ClassifyResponse(model=runner.model.name, version=runner.model.version,
                                   labels=preprocessing["labels"], results=results)

    async def _classify(self, runner: ModelRunner, text: str) -> pb.Classification:
        """One text, as in training: its first ``max_tokens`` tokens through the ``sequence`` graph."""
        tokenizer, limit = self.tokenizers[id(runner)], runner.model.manifest["preprocessing"]["max_tokens"]
        ids = tokenizer.ids(tokenizer.tokens(text))
        kept = ids[:limit]
        out = await runner.run("sequence", {"ids": np.array([kept], dtype=np.int64),
                                            "lengths": np.array([len(kept)], dtype=np.int64)})
        probs = out["probs"][0]
        labels = runner.model.manifest["preprocessing"]["labels"]
        return pb.Classification(probabilities=probs.tolist(), label=labels[int(np.argmax(probs))],
                                 tokens=len(kept), truncated=len(ids) > limit)

    @rpc("StreamSentiment")
    async def StreamSentiment(self, requests, context, call: Call) -> None:
        """One update per complete token; see ``IncrementalWords`` for when a token is complete."""
        message = await read(context, call, self.config.idle_timeout_s)
        if message is None:
            return
        runner = call.use(resolve(self.runners, message.model, "sentiment"))
        tokenizer = self.tokenizers[id(runner)]
        words = IncrementalWords(tokenizer)
        labels = runner.model.manifest["preprocessing"]["labels"]
        position = 0

        async def emit(tokens: list[str]) -> None:
            nonlocal position
            if position + len(tokens) > self.config.max_stream_tokens:
                raise invalid(f"text: the stream exceeds {self.config.max_stream_tokens} tokens (max_stream_tokens)")
            for token, token_id in zip(tokens, tokenizer.ids(tokens), strict=True):
                out = await runner.run("step", {"ids": np.array([token_id], dtype=np.int64)}, slots)
                probs = out["probs"][0]
                await context.write(pb.SentimentUpdate(
                    token=token, position=position, probabilities=probs.tolist(), positive=float(probs[-1]),
                    labels=labels if position == 0 else []))
                call.emitted()
                position += 1

        with runner.open("step") as slots:
            call.stream_opened()
            while message is not None:
                if len(message.text) > self.config.max_text_chars:
                    raise invalid(f"text has {len(message.text)} characters, the limit is "
                                  f"{self.config.max_text_chars} per chunk")
                await emit(words.feed(message.text))
                message = await read(context, call, self.config.idle_timeout_s)
            await emit(words.flush())
