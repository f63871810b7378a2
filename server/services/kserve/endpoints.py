"""Each served model as the KServe protocol shows it: tensor names, datatypes and shapes, and which task
adapter call a request becomes (``docs/triton.md`` has the tables).

An endpoint only maps tensors and parameters to an adapter's arguments and its results back to
tensors; tokenization, decoding and rollout stay in ``server/tasks/``. Kinds of request:

- ``infer``: one whole result (sentiment ``classify``, a forecast, a whole translation);
- ``stream``: the responses of a decoupled model on ``ModelStreamInfer`` (translation: one per
  token or ``max_tokens_per_message``), otherwise ``infer``'s one;
- ``open`` and ``step``: a sequence (``sequence_id``), whose state the adapter keeps in stream slots.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from protos.inference import kserve_pb2 as pb
from server.config import Config
from server.errors import InputError, check_count
from server.graph import Arrays
from server.repository import Served
from server.services.kserve.tensors import (
    BYTES,
    DATATYPES,
    FROM_MANIFEST,
    Params,
    TensorSpec,
    flag,
    integer,
    numbers,
    objects,
    real,
    texts,
)
from server.tasks.forecast import ForecastTask, Series
from server.tasks.sentiment import SentimentTask, Stream
from server.tasks.stateful import StatefulTask, Steps
from server.tasks.translation import Decoding, TranslationTask

PLATFORM = "seqserve"


def strings(values: list[str]) -> np.ndarray:
    return objects([value.encode() for value in values])


class Endpoint:
    """One model version: its tensors, and what ``infer``, ``stream``, ``open`` and ``step`` do."""

    sequences = False  # takes sequence_id, sequence_start, sequence_end
    decoupled = False  # ModelStreamInfer answers with several responses, then a final one
    resumable: str | None = None  # the ResumeState kind of its sequences' resume tokens; None: no tokens
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __init__(self, served: Served, config: Config) -> None:
        self.served, self.config = served, config
        self.name = served.model.name

    @property
    def max_batch_size(self) -> int:
        """0: shapes are whole tensors; > 0: axis 0 is the batch (Triton's ``max_batch_size``)."""
        return 0

    def parameters(self) -> dict[str, str]:
        return {"task": self.served.model.task or "", "description": self.served.model.manifest.description}

    def states(self) -> list[pb.ModelSequenceBatching.State]:
        return []

    def datatype(self, output: str) -> str:
        return next(spec.datatype for spec in self.outputs if spec.name == output)

    async def infer(self, inputs: Arrays, params: Params) -> Arrays:
        raise NotImplementedError

    async def stream(self, inputs: Arrays, params: Params) -> AsyncIterator[Arrays]:
        yield await self.infer(inputs, params)

    def open(self, inputs: Arrays, params: Params) -> AbstractContextManager[Any]:
        """A sequence's state, from its START request (only where ``sequences``)."""
        raise NotImplementedError

    def reopen(self) -> AbstractContextManager[Any]:
        """A sequence's state for a resume token to thaw (only where ``resumable``)."""
        raise NotImplementedError

    async def step(self, state: Any, inputs: Arrays, params: Params, first: bool, end: bool) -> Arrays:
        """One request of a sequence (only where ``sequences``); ``first`` is False for a resumed START."""
        raise NotImplementedError

    def one_text(self, inputs: Arrays, name: str) -> str:
        values = texts(inputs, name)
        check_count(f"{name} (its number of elements)", len(values), 1, 1)
        return values[0]


class SentimentEndpoint(Endpoint):
    """``TEXT`` in; ``PROBABILITIES`` and ``LABEL`` per text, or in a sequence ``TOKENS`` and the running
    ``PROBABILITIES`` after each token that the request's chunk completed (``StreamSentiment``'s updates)."""

    sequences = True
    resumable = "sentiment"

    def __init__(self, served: Served, config: Config) -> None:
        super().__init__(served, config)
        self.task: SentimentTask = served.task
        self.inputs = (TensorSpec("TEXT", BYTES, (-1,)),)
        self.outputs = (TensorSpec("PROBABILITIES", "FP32", (-1, len(self.task.labels))),
                        TensorSpec("LABEL", BYTES, (-1,)), TensorSpec("TOKENS", BYTES, (-1,)))

    def parameters(self) -> dict[str, str]:
        return super().parameters() | {"labels": ",".join(self.task.labels)}

    async def infer(self, inputs: Arrays, params: Params) -> Arrays:
        results = await self.task.classify(texts(inputs, "TEXT"), field="TEXT")
        return {"PROBABILITIES": np.array([r.probabilities for r in results], dtype=np.float32),
                "LABEL": strings([r.label for r in results])}

    def open(self, inputs: Arrays, params: Params) -> AbstractContextManager[Stream]:
        return self.task.stream()

    def reopen(self) -> AbstractContextManager[Stream]:
        return self.task.stream()

    async def step(self, state: Stream, inputs: Arrays, params: Params, first: bool, end: bool) -> Arrays:
        text = self.one_text(inputs, "TEXT")
        updates = [update async for chunk in state.feed(text, field="TEXT") for update in chunk]
        if end:
            updates += [update async for chunk in state.finish() for update in chunk]
        probabilities = np.array([u.probabilities for u in updates], dtype=np.float32)
        return {"TOKENS": strings([u.token for u in updates]),
                "PROBABILITIES": probabilities.reshape(len(updates), len(self.task.labels))}


class ForecastEndpoint(Endpoint):
    """``HISTORY`` (FP64) in, parameters ``horizon`` (default 1) and ``start_month`` (1 = January); out
    ``POINT``, ``QUANTILES`` (every level, in the model's units) and ``MONTH`` per future step. In a
    sequence the first request's ``HISTORY`` opens the series and each later one adds observations,
    as ``Observe``'s messages do."""

    sequences = True
    resumable = "forecast"

    def __init__(self, served: Served, config: Config) -> None:
        super().__init__(served, config)
        self.task: ForecastTask = served.task
        self.levels = self.task.levels([], "quantiles")
        self.inputs = (TensorSpec("HISTORY", "FP64", (-1,)),)
        self.outputs = (TensorSpec("POINT", "FP64", (-1,)),
                        TensorSpec("QUANTILES", "FP64", (-1, len(self.levels))), TensorSpec("MONTH", "INT32", (-1,)))

    def parameters(self) -> dict[str, str]:
        return super().parameters() | {"quantiles": ",".join(f"{q:g}" for q in self.task.pre.quantiles)}

    def _series(self, inputs: Arrays, params: Params) -> AbstractContextManager[Series]:
        history, start_month = numbers(inputs, "HISTORY", "FP64"), integer(params, "start_month", 0)
        self.task.check(history, "HISTORY", integer(params, "horizon", 1), start_month)
        return self.task.series(history, start_month)

    async def _forecast(self, series: Series, params: Params) -> Arrays:
        steps = [step async for step in series.forecast(integer(params, "horizon", 1), self.levels)]
        return {"POINT": np.array([s.point for s in steps], dtype=np.float64),
                "QUANTILES": np.array([s.quantiles for s in steps], dtype=np.float64),
                "MONTH": np.array([s.month for s in steps], dtype=np.int32)}

    async def infer(self, inputs: Arrays, params: Params) -> Arrays:
        with self._series(inputs, params) as series:
            await series.observe([])
            return await self._forecast(series, params)

    def open(self, inputs: Arrays, params: Params) -> AbstractContextManager[Series]:
        return self._series(inputs, params)

    def reopen(self) -> AbstractContextManager[Series]:
        return self.task.resumed_series()

    async def step(self, state: Series, inputs: Arrays, params: Params, first: bool, end: bool) -> Arrays:
        values = [] if first else numbers(inputs, "HISTORY", "FP64")
        if not first:
            self.task.check_more(values, integer(params, "horizon", 1))
        await state.observe(values)
        return await self._forecast(state, params)


class TranslationEndpoint(Endpoint):
    """``TEXT`` (one) in, parameters ``beam``, ``max_length``, ``length_penalty`` (0 or unset: the model's)
    and ``max_tokens_per_message``. ``ModelInfer``: ``TRANSLATION`` and ``TOKEN_IDS``;
    ``ModelStreamInfer`` (decoupled): ``PIECES``, ``TOKEN_IDS`` and ``LOG_PROBS`` of each decoded token."""

    decoupled = True

    def __init__(self, served: Served, config: Config) -> None:
        super().__init__(served, config)
        self.task: TranslationTask = served.task
        self.inputs = (TensorSpec("TEXT", BYTES, (1,)),)
        self.outputs = (TensorSpec("TRANSLATION", BYTES, (1,)), TensorSpec("TOKEN_IDS", "INT64", (-1,)),
                        TensorSpec("PIECES", BYTES, (-1,)), TensorSpec("LOG_PROBS", "FP32", (-1,)))

    def _request(self, inputs: Arrays, params: Params) -> tuple[str, Decoding]:
        decoding = self.task.decoding(integer(params, "beam", 0), integer(params, "max_length", 0),
                                      real(params, "length_penalty", 0.0), integer(params, "max_tokens_per_message", 0),
                                      prefix="parameters.", fill=flag(params, "fill_messages"))
        return self.one_text(inputs, "TEXT"), decoding

    async def infer(self, inputs: Arrays, params: Params) -> Arrays:
        text, decoding = self._request(inputs, params)
        with self.task.stream(text, decoding, field="TEXT") as paragraph:
            [translated] = await self.task.translate([paragraph], decoding)
        return {"TRANSLATION": strings([translated.text]), "TOKEN_IDS": np.array(translated.token_ids, dtype=np.int64)}

    async def stream(self, inputs: Arrays, params: Params) -> AsyncIterator[Arrays]:
        text, decoding = self._request(inputs, params)
        piece = self.task.tokenizer.piece
        with self.task.stream(text, decoding, field="TEXT") as paragraph:
            _, chunks = self.task.decode(paragraph, decoding, decoding.per_update)
            async for tokens in chunks:
                    yield {"PIECES": strings([piece(t.token_id) for t in tokens]),
                       "TOKEN_IDS": np.array([t.token_id for t in tokens], dtype=np.int64),
                       "LOG_PROBS": np.array([t.log_prob for t in tokens], dtype=np.float32)}


class StatefulEndpoint(Endpoint):
    """A model without a task: its step graph's other inputs and outputs, one step per request of a
    sequence; the server feeds the state back (Triton's ``sequence_batching.state``)."""

    sequences = True
    resumable = "stateful"

    def __init__(self, served: Served, config: Config) -> None:
        super().__init__(served, config)
        self.task: StatefulTask = served.task
        self.inputs = tuple(self._spec(t) for t in self.task.inputs)
        self.outputs = tuple(self._spec(t) for t in self.task.outputs)

    @staticmethod
    def _spec(tensor: Any) -> TensorSpec:
        return TensorSpec(tensor.name, FROM_MANIFEST[tensor.dtype],
                          tuple(-1 if isinstance(d, str) else d for d in tensor.shape))

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch  # steps of many sequences run as one batch; a request is one row

    def states(self) -> list[pb.ModelSequenceBatching.State]:
        return [pb.ModelSequenceBatching.State(input_name=s.input, output_name=s.output,
                                               data_type=DATATYPES[FROM_MANIFEST[s.dtype]][2], dims=s.shape)
                for s in self.task.state]

    async def infer(self, inputs: Arrays, params: Params) -> Arrays:
        raise InputError(f"inference request to model {self.name!r} must specify a non-zero or non-empty "
                         "correlation ID (parameters['sequence_id'])")

    def open(self, inputs: Arrays, params: Params) -> AbstractContextManager[Steps]:
        return self.task.sequence()

    def reopen(self) -> AbstractContextManager[Steps]:
        return self.task.sequence()

    async def step(self, state: Steps, inputs: Arrays, params: Params, first: bool, end: bool) -> Arrays:
        if any(value.ndim == 0 or value.shape[0] != 1 for value in inputs.values()):
            raise InputError(f"inference request to model {self.name!r} must specify batch-size 1 due to "
                             "requirements of sequence batcher")
        self.task.check(inputs)
        return await state.step(inputs)


ENDPOINTS: dict[str | None, type[Endpoint]] = {"sentiment": SentimentEndpoint, "forecast": ForecastEndpoint,
                                               "translation": TranslationEndpoint, None: StatefulEndpoint}


def endpoint(served: Served, config: Config) -> Endpoint:
    return ENDPOINTS[served.model.task](served, config)
