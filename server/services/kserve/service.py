"""``inference.GRPCInferenceService`` (KServe v2 / Triton) on the server's port, over the same task adapters,
engine and limits as ``seqserve.v1`` (``docs/triton.md``).

The servicer resolves the model, decodes the tensors (``tensors.py``), admits sequence requests
(``sequences.py``), lets the model's endpoint (``endpoints.py``) call its task adapter, and encodes the
outputs into ``raw_output_contents``. ``ModelInfer`` fails a request with a gRPC status, as
``seqserve.v1`` does; on ``ModelStreamInfer`` a failed request's message goes into ``error_message``
and the stream stays open. Both count in the same metrics as ``seqserve.v1`` with ``protocol="kserve"``;
each request on a stream is one call of method ``ModelStreamInfer``.

Resume tokens (``server/resume.py``) travel as base64 in string parameters: a sequence request with
``seqserve_want_resume_token`` gets ``seqserve_resume_token`` in its response, and a START request with
``seqserve_resume_token`` continues that sequence (``docs/triton.md``, Resume tokens).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata

import grpc

from protos.inference import kserve_pb2 as pb
from protos.inference import kserve_pb2_grpc
from protos.seqserve.v1 import resume_pb2
from server.config import Config
from server.errors import InputError
from server.graph import Arrays
from server.metrics import Metrics
from server.reload import Reloader
from server.repository import Repository, Served
from server.resume import ResumeTokens, invalid, same_model
from server.rpc import KSERVE, Call, RequestError, lookup, rpc, status
from server.services.kserve.endpoints import PLATFORM, Endpoint, endpoint
from server.services.kserve.sequences import Sequences, Turn
from server.services.kserve.statistics import Statistics, Timing
from server.services.kserve.tensors import DATATYPES, Params, decode_inputs, encode, flag, parameters

kserve = functools.partial(rpc, protocol=KSERVE)
EXTENSIONS = ["model_configuration", "sequence", "parameters", "statistics"]
FINAL = "triton_final_response"
WANT_TOKEN, TOKEN = "seqserve_want_resume_token", "seqserve_resume_token"  # docs/triton.md, Resume tokens


def version_of() -> str:
    try:
        return metadata.version("seqserve")
    except metadata.PackageNotFoundError:  # run from a source tree that pip did not install (the Docker image)
        return "unknown"


@dataclass
class Job:
    """One admitted inference request."""

    request: pb.ModelInferRequest
    served: Served
    endpoint: Endpoint
    inputs: Arrays
    params: Params
    outputs: list[str]  # requested outputs; empty: all that the request produces
    turn: Turn | None  # its place in a sequence
    timing: Timing
    resumed: resume_pb2.ResumeState | None = None  # a START that continues a sequence from a resume token
    want_token: bool = False  # the response carries a resume token of its sequence
    token: bytes | None = None  # that token, once the request has run


class Writer:
    """A stream's responses, one write at a time; nothing is written once the call has ended."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context, self.lock = context, asyncio.Lock()

    async def write(self, message: pb.ModelStreamInferResponse) -> None:
        async with self.lock:
            if not self.context.done():
                await self.context.write(message)


class KServeService(kserve_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: Repository, config: Config, metrics: Metrics, reloader: Reloader) -> None:
        self.repository, self.config, self.metrics, self.reloader = repository, config, metrics, reloader
        self.endpoints = {(name, version): endpoint(served, config)
                          for name, versions in repository.items() for version, served in versions.items()}
        self.sequences = Sequences(metrics, config.sequence_idle_timeout_s)
        self.statistics = Statistics()
        self.resume = ResumeTokens(config)
        self.ready = False  # set by the server once every model is warmed up, cleared when it stops

    def added(self, served: Served) -> None:
        """Hot reload loaded ``served``: its endpoint, before the repository serves it."""
        self.endpoints[(served.model.name, served.model.version)] = endpoint(served, self.config)

    def removed(self, served: Served) -> None:
        """Hot reload retired ``served``: its open sequences keep their endpoint; new requests cannot find it."""
        del self.endpoints[(served.model.name, served.model.version)]

    def close(self) -> None:
        """The server stops: every open sequence ends and frees its state."""
        self.sequences.end_all("cancelled")

    def _find(self, name: str, version: str, field: str = "") -> tuple[Served, Endpoint]:
        if version and not version.isdigit():
            raise InputError(f"{field}version {version!r} is not a version number (a positive integer; empty: "
                             "the newest)")
        served = lookup(self.repository, name, int(version or 0), field)
        return served, self.endpoints[(served.model.name, served.model.version)]

    @kserve("ServerLive")
    async def ServerLive(self, request: pb.ServerLiveRequest, context, call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @kserve("ServerReady")
    async def ServerReady(self, request: pb.ServerReadyRequest, context, call: Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    @kserve("ModelReady")
    async def ModelReady(self, request: pb.ModelReadyRequest, context, call: Call) -> pb.ModelReadyResponse:
        try:
            self._find(request.name, request.version)
        except (RequestError, InputError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    @kserve("ServerMetadata")
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context, call: Call
                             ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="seqserve", version=version_of(), extensions=EXTENSIONS)

    @kserve("ModelMetadata")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context, call: Call
                            ) -> pb.ModelMetadataResponse:
        served, found = self._find(request.name, request.version)
        call.use(served)
        return pb.ModelMetadataResponse(
            name=found.name, versions=[str(v) for v in sorted(self.repository[found.name])], platform=PLATFORM,
            inputs=[spec.metadata() for spec in found.inputs], outputs=[spec.metadata() for spec in found.outputs])

    @kserve("ModelConfig")
    async def ModelConfig(self, request: pb.ModelConfigRequest, context, call: Call) -> pb.ModelConfigResponse:
        served, found = self._find(request.name, request.version)
        call.use(served)
        batched = found.max_batch_size > 0

        def dims(shape: tuple[int, ...]) -> tuple[int, ...]:
            return shape[1:] if batched else shape

        config = pb.ModelConfig(
            name=found.name, platform=PLATFORM, backend=PLATFORM, max_batch_size=found.max_batch_size,
            input=[pb.ModelInput(name=s.name, data_type=DATATYPES[s.datatype][2], dims=dims(s.shape))
                   for s in found.inputs],
            output=[pb.ModelOutput(name=s.name, data_type=DATATYPES[s.datatype][2], dims=dims(s.shape))
                    for s in found.outputs],
            parameters={key: pb.ModelParameter(string_value=value) for key, value in found.parameters().items()})
        if found.sequences:
            config.sequence_batching.CopyFrom(pb.ModelSequenceBatching(
                max_sequence_idle_microseconds=int(self.config.sequence_idle_timeout_s * 1e6), state=found.states()))
        if found.decoupled:
            config.model_transaction_policy.decoupled = True
        return pb.ModelConfigResponse(config=config)

    @kserve("ModelStatistics")
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context, call: Call
                              ) -> pb.ModelStatisticsResponse:
        if request.name and request.version:
            served = [self._find(request.name, request.version)[0]]
        else:
            names = [self._find(request.name, "")[0].model.name] if request.name else sorted(self.repository)
            served = [self.repository[name][version] for name in names for version in sorted(self.repository[name])]
        return pb.ModelStatisticsResponse(model_stats=[self.statistics.message(s) for s in served])

    @kserve("RepositoryIndex")
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context, call: Call
                              ) -> pb.RepositoryIndexResponse:
        """Each version served (READY), retired by hot reload while its last sequences end (UNLOADING), and refused
        by hot reload (UNAVAILABLE, with the reason)."""
        state, index = "READY" if self.ready else "UNAVAILABLE", pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            *(index(name=name, version=str(version), state=state)
              for name in sorted(self.repository) for version in sorted(self.repository[name])),
            *(index(name=s.model.name, version=str(s.model.version), state="UNLOADING")
              for s in self.reloader.retiring),
            *(index(name=folder.parent.name, version=folder.name, state="UNAVAILABLE", reason=error)
              for folder, (_, error) in sorted(self.reloader.refused.items()))])

    def _admit(self, request: pb.ModelInferRequest, call: Call, owner: object | None) -> Job:
        """Check a request and take its place in its sequence; no ``await`` (sequence requests keep their order)."""
        timing = Timing()
        params = parameters(request.parameters)
        sequence_id = params.get("sequence_id", 0)
        if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
            raise InputError(f"parameters['sequence_id'] is {sequence_id!r}: a sequence id is an integer or a string")
        start, end = flag(params, "sequence_start"), flag(params, "sequence_end")
        ongoing = None if start or sequence_id in (0, "") else self.sequences.target(
            request.model_name, request.model_version, sequence_id)  # on its version, even one hot reload retired
        served, found = ongoing or self._find(request.model_name, request.model_version, "model_")
        want_token = flag(params, WANT_TOKEN)
        resumed = None
        if TOKEN in params:
            served, found, resumed = self._resumed(request, params[TOKEN], found, start)
        if want_token:
            self._check_resumable(found, f"parameters[{WANT_TOKEN!r}]", sequence_id, end)
        call.use(served)
        inputs = decode_inputs(request)
        timing.decoded = time.perf_counter_ns()
        declared = [spec.name for spec in found.inputs]
        for index, tensor in enumerate(request.inputs):
            if tensor.name not in declared:
                raise InputError(f"inputs[{index}]: {tensor.name!r} is not an input of model {found.name!r} "
                                 f"(its inputs: {declared})")
        known = [spec.name for spec in found.outputs]
        for index, output in enumerate(request.outputs):
            if output.name not in known:
                raise InputError(f"outputs[{index}]: {output.name!r} is not an output of model {found.name!r} "
                                 f"(its outputs: {known})")
        turn = None
        if sequence_id not in (0, ""):
            if not found.sequences:
                raise InputError(f"model {found.name!r} does not take sequences (parameters['sequence_id']): send "
                                 "its requests without one")
            turn = self.sequences.admit((found.name, served.model.version, sequence_id), start, end, owner,
                                        call.labels, (served, found))
        elif start or end:
            raise InputError("parameters['sequence_start'] and ['sequence_end'] need a parameters['sequence_id']")
        return Job(request, served, found, inputs, params, [output.name for output in request.outputs], turn, timing,
                   resumed, want_token)

    def _check_resumable(self, found: Endpoint, field: str, sequence_id: int | str, end: bool) -> None:
        """Tokens are on and ``found``'s sequences have them; ``field`` (a parameter) names the refusal."""
        self.resume.require(field)
        if not found.resumable:
            raise invalid(field, f"model {found.name!r} has no resume tokens (only the sequences of sentiment, "
                                 "forecast and generic stateful models)")
        if sequence_id in (0, ""):
            raise invalid(field, "a resume token belongs to a sequence: send it with parameters['sequence_id']")
        if end:
            raise invalid(field, "the request ends its sequence (sequence_end): there is nothing left to resume")

    def _resumed(self, request: pb.ModelInferRequest, value: object, found: Endpoint, start: bool
                 ) -> tuple[Served, Endpoint, resume_pb2.ResumeState]:
        """The model version, endpoint and state of a START request's resume token (base64 in a string)."""
        field = f"parameters[{TOKEN!r}]"
        self.resume.require(field)
        if not isinstance(value, str):
            raise invalid(field, f"is a {type(value).__name__}, expected a string (the token in base64)")
        if not start:
            raise invalid(field, "a sequence resumes on its START request (sequence_start)")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(field, "is not base64 (the token as a response's parameter carried it)") from None
        if not found.resumable:
            raise invalid(field, f"model {found.name!r} has no resume tokens")
        served, state = self.resume.open(raw, self.repository, found.resumable, field)
        same_model(request.model_name, served, "model_name")
        if request.model_version and request.model_version != str(served.model.version):
            raise invalid(field, f"the token is of version {served.model.version}, the request names version "
                                 f"{request.model_version[:20]!r} (leave model_version empty, or name the token's)")
        return served, self.endpoints[(served.model.name, served.model.version)], state

    async def _results(self, job: Job, streaming: bool) -> AsyncIterator[Arrays]:
        """The outputs of each response to ``job``: one, or a decoupled model's several on a stream."""
        found, inputs, params, turn = job.endpoint, job.inputs, job.params, job.turn
        if turn is not None:
            opener = (lambda: found.open(inputs, params)) if job.resumed is None else (lambda: self._thawed(job))
            yield await self.sequences.run(turn, opener, lambda state, first: self._step(job, state, first))
            return
        job.timing.started = time.perf_counter_ns()
        if streaming:
            async for outputs in found.stream(inputs, params):
                yield outputs
        else:
            yield await found.infer(inputs, params)

    @staticmethod
    @contextmanager
    def _thawed(job: Job) -> Iterator[object]:
        """A resumed sequence's state: the endpoint's placeholder, set to the token's."""
        with job.endpoint.reopen() as state:
            ResumeTokens.thaw(state, job.resumed, f"parameters[{TOKEN!r}]")
            yield state

    async def _step(self, job: Job, state: object, first: bool) -> Arrays:
        """A sequence request, once the requests before it have finished; then its token, if it asked for one."""
        job.timing.started = time.perf_counter_ns()
        outputs = await job.endpoint.step(state, job.inputs, job.params, first and job.resumed is None, job.turn.end)
        if job.want_token:
            job.token = self.resume.freeze(job.served.model, state, job.endpoint.resumable)
        return outputs

    def _response(self, job: Job, outputs: Arrays, final: bool | None = None) -> pb.ModelInferResponse:
        """``outputs`` in ``raw_output_contents``: those requested, in their order, that this kind of request
        produces (perf_analyzer asks for every output of the metadata), or all of them."""
        started = time.perf_counter_ns()
        response = self._header(job.request, job.served)
        for name in [name for name in job.outputs if name in outputs] if job.outputs else list(outputs):
            tensor, blob = encode(name, job.endpoint.datatype(name), outputs[name])
            response.outputs.append(tensor)
            response.raw_output_contents.append(blob)
        if final is not None:
            response.parameters[FINAL].bool_param = final
        if job.token is not None:
            response.parameters[TOKEN].string_param = base64.b64encode(job.token).decode()
        job.timing.output_ns += time.perf_counter_ns() - started
        return response

    @staticmethod
    def _header(request: pb.ModelInferRequest, served: Served | None) -> pb.ModelInferResponse:
        """A response to ``request``: its model and its ``id``, echoed."""
        return pb.ModelInferResponse(model_name=served.model.name if served else request.model_name,
                                     model_version=str(served.model.version) if served else request.model_version,
                                     id=request.id)

    @staticmethod
    def _emitted(call: Call, outputs: Arrays) -> None:
        """Results as ``seqserve.v1`` counts them: a translation's tokens (``TOKEN_IDS``), else the rows of the
        first output (forecast steps, probabilities, sequence steps)."""
        first = outputs.get("TOKEN_IDS", next(iter(outputs.values()), None))
        if first is not None and len(first):
            call.emitted(len(first))

    @kserve("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context, call: Call) -> pb.ModelInferResponse:
        job = self._admit(request, call, owner=None)
        with self.statistics.request(job.served, job.timing):
            async for outputs in self._results(job, streaming=False):
                response = self._response(job, outputs)
                self._emitted(call, outputs)
        return response

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest], context
                               ) -> None:
        """Each request is answered as it finishes; requests of one sequence run in order."""
        writer = Writer(context)
        answers: dict[asyncio.Task, Job | Exception] = {}

        def answered(answer: asyncio.Task) -> None:
            job = answers.pop(answer)
            if isinstance(job, Job) and job.turn is not None:
                self.sequences.abandon(job.turn)  # cancelled before it ran: its sequence ends

        try:
            async for request in requests:
                call = Call(self.metrics, "ModelStreamInfer", None, KSERVE)
                try:
                    job: Job | Exception = self._admit(request, call, owner=writer)
                except Exception as error:  # answered in error_message, below
                    job = error
                answer = asyncio.create_task(self._answer(request, job, call, writer))
                answers[answer] = job
                answer.add_done_callback(answered)
                answer.add_done_callback(lambda _, call=call: call.release())  # also when cancelled before it ran
            await asyncio.gather(*answers)
        finally:
            for answer in answers:
                answer.cancel()
            await asyncio.gather(*answers, return_exceptions=True)
            self.sequences.end_owned(writer, "cancelled")

    async def _answer(self, request: pb.ModelInferRequest, job: Job | Exception, call: Call, writer: Writer) -> None:
        """The responses to one request on a stream; a failure is sent as its ``error_message``."""
        try:
            if isinstance(job, Exception):
                raise job
            decoupled = job.endpoint.decoupled and job.turn is None
            if decoupled:
                call.stream_opened()
            with self.statistics.request(job.served, job.timing):
                async for outputs in self._results(job, streaming=True):
                    await writer.write(pb.ModelStreamInferResponse(
                        infer_response=self._response(job, outputs, final=not decoupled)))
                    self._emitted(call, outputs)
            if decoupled:
                final = self._header(request, job.served)
                final.parameters[FINAL].bool_param = True
                await writer.write(pb.ModelStreamInferResponse(infer_response=final))
        except asyncio.CancelledError:
            call.finish(grpc.StatusCode.CANCELLED)
            raise
        except Exception as error:
            code, message = status(error, "ModelStreamInfer")
            call.finish(code)
            served = None if isinstance(job, Exception) else job.served
            await writer.write(pb.ModelStreamInferResponse(error_message=message,
                                                           infer_response=self._header(request, served)))
        else:
            call.finish(grpc.StatusCode.OK)
