"""``seqserve.v1.Sentiment``: ``Classify`` (whole texts) and ``StreamSentiment`` (text as it arrives)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from protos.seqserve.v1 import sentiment_pb2 as pb
from protos.seqserve.v1 import sentiment_pb2_grpc
from server.config import Config
from server.metrics import Metrics
from server.repository import Repository
from server.resume import ResumeTokens, same_model
from server.rpc import Call, resolve, rpc
from server.tasks.sentiment import TokenUpdate


class SentimentService(sentiment_pb2_grpc.SentimentServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics
        self.resume = ResumeTokens(config)

    @rpc("Classify")
    async def Classify(self, request: pb.ClassifyRequest, context, call: Call) -> pb.ClassifyResponse:
        served = call.use(resolve(self.repository, request.model, "sentiment"))
        results = await served.task.classify(list(request.texts))
        call.emitted(sum(r.tokens for r in results))
        return pb.ClassifyResponse(model=served.model.name, version=served.model.version, labels=served.task.labels,
                                   results=[pb.Classification(probabilities=r.probabilities, label=r.label,
                                                              tokens=r.tokens)
                                            for r in results])

    @rpc("StreamSentiment")
    async def StreamSentiment(self, requests, context, call: Call) -> None:
        """One update per complete token; resume tokens when asked for and when the server ends the stream."""
        message = await call.read()
        if message is None:
            return
        if message.resume_token:
            served, resumed = self.resume.open(message.resume_token, self.repository, "sentiment")
            same_model(message.model.name, served)
        else:
            served, resumed = resolve(self.repository, message.model, "sentiment"), None
        task = call.use(served).task
        most = task.per_message(message.max_tokens_per_message)
        with task.stream() as stream:
            if resumed is not None:
                self.resume.thaw(stream, resumed)
            updates = stream.feed(message.text, most=most)  # the first chunk is checked before the stream counts
            call.stream_opened()
            read = 0  # chunks whose updates are all out

            async def send_token() -> None:
                await call.write(pb.SentimentUpdate(resume_token=self.resume.freeze(served.model, stream, "sentiment"),
                                                    chunks_read=read), 0)

            if self.resume.enabled:
                call.resumable(send_token)
            while message is not None:
                await self._send(updates, task.labels, call, most > 1)
                updates = None  # spent: an idle stream does not keep it (bench/idle_sessions.py)
                read += 1
                if message.want_resume_token:
                    self.resume.require("want_resume_token")
                    await send_token()
                message = await call.read()
                if message is not None:
                    updates = stream.feed(message.text, most=most)
            await self._send(stream.finish(most), task.labels, call, most > 1)

    @staticmethod
    async def _send(updates: AsyncIterator[list[TokenUpdate]], labels: list[str], call: Call, packed: bool) -> None:
        """Each list of updates as one message: in ``tokens`` when the stream asked for several per message, else
        (one each) in the single-token fields."""
        async for chunk in updates:
            first = labels if chunk[0].position == 0 else []
            if not packed:
                update = chunk[0]
                await call.write(pb.SentimentUpdate(
                    token=update.token, position=update.position, probabilities=update.probabilities,
                    positive=update.probabilities[-1], labels=first))
            else:
                await call.write(pb.SentimentUpdate(labels=first, tokens=[pb.TokenSentiment(
                    token=u.token, position=u.position, probabilities=u.probabilities, positive=u.probabilities[-1])
                    for u in chunk]), len(chunk))
