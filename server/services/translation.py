"""``seqserve.v1.Translation``: ``Translate`` (tokens as they are decoded) and ``TranslateBatch``."""

from __future__ import annotations

import asyncio

from protos.seqserve.v1 import translate_pb2 as pb
from protos.seqserve.v1 import translate_pb2_grpc
from server.config import Config
from server.errors import check_count, check_text, check_texts
from server.metrics import Metrics
from server.repository import Repository
from server.rpc import Call, resolve, rpc
from server.tasks.translation import TranslationTask


def decoding(task: TranslationTask, options: pb.DecodeOptions):
    return task.decoding(options.beam, options.max_length, options.length_penalty, prefix="options.")


class TranslationService(translate_pb2_grpc.TranslationServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics

    @rpc("Translate")
    async def Translate(self, request: pb.TranslateRequest, context, call: Call) -> None:
        task = call.use(resolve(self.repository, request.model, "translation")).task
        check_text("text", request.text, self.config.max_text_chars)
        most = request.options.max_tokens_per_message or 1
        check_count("options.max_tokens_per_message", most, 1, self.config.max_decode_len)
        call.stream_opened()
        ids, chunks = task.decode(request.text, decoding(task, request.options), most)
        piece = task.tokenizer.piece
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
        task = call.use(resolve(self.repository, request.model, "translation")).task
        check_texts("texts", list(request.texts), self.config.max_texts, self.config.max_text_chars)
        options = decoding(task, request.options)
        translations = await asyncio.gather(*(task.translate(text, options) for text in request.texts))
        call.emitted(sum(len(t.token_ids) for t in translations))
        return pb.TranslateBatchResponse(translations=[
            pb.Translated(text=t.text, token_ids=t.token_ids, log_prob=t.log_prob) for t in translations])
