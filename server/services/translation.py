"""``seqserve.v1.Translation``: ``Translate`` (tokens as they are decoded, each update's bytes built by
``wire.UpdateBytes``) and ``TranslateBatch``."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from protos.seqserve.v1 import translate_pb2 as pb
from protos.seqserve.v1 import translate_pb2_grpc
from server.config import Config
from server.metrics import Metrics
from server.repository import Repository
from server.rpc import Call, resolve, rpc
from server.services.wire import UpdateBytes
from server.tasks.translation import Decoding, TranslationTask


def decoding(task: TranslationTask, options: pb.DecodeOptions) -> Decoding:
    return task.decoding(options.beam, options.max_length, options.length_penalty, options.max_tokens_per_message,
                         prefix="options.")


class TranslationService(translate_pb2_grpc.TranslationServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics
        self.wires: WeakKeyDictionary[TranslationTask, UpdateBytes] = WeakKeyDictionary()  # per model version

    @rpc("Translate")
    async def Translate(self, request: pb.TranslateRequest, context, call: Call) -> None:
        task = call.use(resolve(self.repository, request.model, "translation")).task
        options = decoding(task, request.options)
        wire = self.wires.get(task) or self.wires.setdefault(task, UpdateBytes(task.tokenizer.pieces))
        with task.stream(request.text, options) as lease:
            call.stream_opened()
            ids, chunks = task.decode(request.text, options, lease, options.per_update)
            source = wire.source(ids)
            async for tokens in chunks:
                await call.write(wire.update(tokens, len(ids), source), len(tokens))
                source = b""
            if source:  # no token at all (max_length 1): the source pieces are sent all the same
                await call.write(source, 0)

    @rpc("TranslateBatch")
    async def TranslateBatch(self, request: pb.TranslateBatchRequest, context, call: Call
                             ) -> pb.TranslateBatchResponse:
        task = call.use(resolve(self.repository, request.model, "translation")).task
        options, texts = decoding(task, request.options), list(request.texts)
        with task.batch(texts, options) as leases:
            call.stream_opened(len(leases))
            translations = await task.translate(texts, options, leases)
        call.emitted(sum(len(t.token_ids) for t in translations))
        return pb.TranslateBatchResponse(translations=[
            pb.Translated(text=t.text, token_ids=t.token_ids, log_prob=t.log_prob) for t in translations])
