"""``seqserve.v1.Translation``: ``Translate`` (tokens as they are decoded) and ``TranslateBatch``."""

from __future__ import annotations

from protos.seqserve.v1 import translate_pb2 as pb
from protos.seqserve.v1 import translate_pb2_grpc
from server.config import Config
from server.metrics import Metrics
from server.repository import Repository
from server.rpc import Call, resolve, rpc
from server.tasks.translation import Decoding, TranslationTask


def decoding(task: TranslationTask, options: pb.DecodeOptions) -> Decoding:
    return task.decoding(options.beam, options.max_length, options.length_penalty, options.max_tokens_per_message,
                         prefix="options.")


class TranslationService(translate_pb2_grpc.TranslationServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics

    @rpc("Translate")
    async def Translate(self, request: pb.TranslateRequest, context, call: Call) -> None:
        task = call.use(resolve(self.repository, request.model, "translation")).task
        options = decoding(task, request.options)
        with task.stream(request.text, options) as paragraph:
            call.stream_opened(len(paragraph.leases))
            ids, chunks = task.decode(paragraph, options, options.per_update)
            piece = task.tokenizer.piece
            source = [piece(i) for i in ids]
            async for tokens in chunks:
                await call.write(pb.TranslateUpdate(
                    tokens=[pb.TranslateToken(piece=piece(t.token_id), token_id=t.token_id, log_prob=t.log_prob,
                                              attention=t.attention[: len(ids)].tolist()) for t in tokens],
                    source_tokens=source), len(tokens))
                source = []
            await call.write(pb.TranslateUpdate(source_tokens=source, text=paragraph.text()), 0)

    @rpc("TranslateBatch")
    async def TranslateBatch(self, request: pb.TranslateBatchRequest, context, call: Call
                             ) -> pb.TranslateBatchResponse:
        task = call.use(resolve(self.repository, request.model, "translation")).task
        options, texts = decoding(task, request.options), list(request.texts)
        with task.batch(texts, options) as paragraphs:
            call.stream_opened(sum(len(p.leases) for p in paragraphs))
            translations = await task.translate(paragraphs, options)
        call.emitted(sum(len(t.token_ids) for t in translations))
        return pb.TranslateBatchResponse(translations=[
            pb.Translated(text=t.text, token_ids=t.token_ids, log_prob=t.log_prob) for t in translations])
