"""``seqserve.v1.Translation``: ``Translate`` (tokens as they are decoded) and ``TranslateBatch``."""

from __future__ import annotations

from dataclasses import replace

from protos.seqserve.v1 import resume_pb2, translate_pb2_grpc
from protos.seqserve.v1 import translate_pb2 as pb
from server.config import Config
from server.errors import InputError, check_count
from server.metrics import Metrics
from server.repository import Repository, Served
from server.resume import ResumeTokens, same_model
from server.rpc import Call, resolve, rpc
from server.tasks.translation import Decoding, TranslationTask


def decoding(task: TranslationTask, options: pb.DecodeOptions) -> Decoding:
    return task.decoding(options.beam, options.max_length, options.length_penalty, options.max_tokens_per_message,
                         prefix="options.", fill=options.fill_messages)


class TranslationService(translate_pb2_grpc.TranslationServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics
        self.resume = ResumeTokens(config)

    @rpc("Translate")
    async def Translate(self, request: pb.TranslateRequest, context, call: Call) -> None:
        """Greedy streams are resumable: tokens every ``resume_every`` tokens and when the server ends the stream."""
        resumed = None
        if request.resume_token:
            served, state = self.resume.open(request.resume_token, self.repository, "translation")
            same_model(request.model.name, served)
            resumed = state.translation
        else:
            served = resolve(self.repository, request.model, "translation")
        task = call.use(served).task
        options = decoding(task, request.options)
        check_count("resume_every", request.resume_every, 0, self.config.max_decode_len)
        if (resumed is not None or request.resume_every) and options.beam > 1:
            raise InputError(f"options.beam is {options.beam}: only greedy translations (beam 1) resume")
        if request.resume_every:
            self.resume.require("resume_every")
        if resumed is not None:
            options = replace(options, max_length=resumed.max_length)
            admitted = task.resumed_stream(resumed.source, options)
        else:
            admitted = task.stream(request.text, options)
        with admitted as paragraph:
            call.stream_opened(len(paragraph.leases))
            one_sentence = len(paragraph.sentences) == 1
            if request.resume_every and not one_sentence:
                raise InputError(f"resume_every: only a one-sentence text resumes; text has "
                                 f"{len(paragraph.sentences)} sentences")
            if resumed is not None:
                sent = list(resumed.sent_ids)
                ids, chunks = task.resume(paragraph, sent, options)
            else:
                (ids, chunks), sent = task.decode(paragraph, options, options.per_update), []
            piece = task.tokenizer.piece
            source = [] if resumed is not None else [piece(i) for i in ids]
            covered = len(sent)  # tokens covered by the last resume token sent

            def token() -> bytes:
                return self._freeze(served, paragraph.sentences[0].text, sent, options)

            async def send_token() -> None:
                await call.write(pb.TranslateUpdate(resume_token=token()), 0)

            if self.resume.enabled and options.beam == 1 and one_sentence:
                call.resumable(send_token)
            async for tokens in chunks:
                sent += [t.token_id for t in tokens]
                periodic = b""
                if request.resume_every and len(sent) - covered >= request.resume_every:
                    periodic, covered = token(), len(sent)
                await call.write(pb.TranslateUpdate(
                    tokens=[pb.TranslateToken(piece=piece(t.token_id), token_id=t.token_id, log_prob=t.log_prob,
                                              attention=t.attention[: len(ids)].tolist()) for t in tokens],
                    source_tokens=source, resume_token=periodic), len(tokens))
                source = []
                await call.checkpoint()
            await call.write(pb.TranslateUpdate(source_tokens=source, text=paragraph.text()), 0)

    def _freeze(self, served: Served, source: str, sent: list[int], options: Decoding) -> bytes:
        state = resume_pb2.TranslationState(source=source, sent_ids=sent, max_length=options.max_length)
        return self.resume.make(served.model, resume_pb2.ResumeState(translation=state))

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
