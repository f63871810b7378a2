"""``seqserve.v1.Sentiment``: ``Classify`` (whole texts) and ``StreamSentiment`` (text as it arrives)."""

from __future__ import annotations

import asyncio

from protos.seqserve.v1 import sentiment_pb2 as pb
from protos.seqserve.v1 import sentiment_pb2_grpc
from server.config import Config
from server.errors import check_chunk, check_texts
from server.metrics import Metrics
from server.repository import Repository
from server.rpc import Call, read, resolve, rpc


class SentimentService(sentiment_pb2_grpc.SentimentServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics

    @rpc("Classify")
    async def Classify(self, request: pb.ClassifyRequest, context, call: Call) -> pb.ClassifyResponse:
        served = call.use(resolve(self.repository, request.model, "sentiment"))
        check_texts("texts", list(request.texts), self.config.max_texts, self.config.max_text_chars)
        results = await asyncio.gather(*(served.task.classify(text) for text in request.texts))
        call.emitted(sum(r.tokens for r in results))
        return pb.ClassifyResponse(model=served.model.name, version=served.model.version, labels=served.task.labels,
                                   results=[pb.Classification(probabilities=r.probabilities, label=r.label,
                                                              tokens=r.tokens, truncated=r.truncated)
                                            for r in results])

    @rpc("StreamSentiment")
    async def StreamSentiment(self, requests, context, call: Call) -> None:
        """One update per complete token."""
        message = await read(context, call, self.config.idle_timeout_s)
        if message is None:
            return
        task = call.use(resolve(self.repository, message.model, "sentiment")).task
        with task.stream() as stream:
            call.stream_opened()
            while message is not None:
                check_chunk("text", message.text, self.config.max_text_chars)
                await self._send(stream.feed(message.text), task.labels, context, call)
                message = await read(context, call, self.config.idle_timeout_s)
            await self._send(stream.finish(), task.labels, context, call)

    @staticmethod
    async def _send(updates, labels: list[str], context, call: Call) -> None:
        async for update in updates:
            await context.write(pb.SentimentUpdate(
                token=update.token, position=update.position, probabilities=update.probabilities,
                positive=update.probabilities[-1], labels=labels if update.position == 0 else []))
            call.emitted()
