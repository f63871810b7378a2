"""``inference.GRPCInferenceService`` driven by the stock ``tritonclient`` (PyPI), over a real loopback server.

The repository holds the shipped models and ``gru``: a GRU step graph built here with random weights
and a manifest without a task, served generically (its sequences must equal the graph run in a loop).
Everything is compared with ``seqserve.v1``'s answers for the same inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import math
import queue
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper
from servers import Running, newest, wait_for
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from client import Client
from contract.repository import load_model
from protos.inference import kserve_pb2, kserve_pb2_grpc
from protos.seqserve.v1 import common_pb2, forecast_pb2
from server.config import Config
from server.metrics import Metrics
from server.services.kserve.sequences import Sequences

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("sentiment", "forecast", "translation")
pytestmark = pytest.mark.skipif(not all((ROOT / "models" / name).is_dir() for name in SHIPPED),
                                reason="the shipped models are missing")
HISTORY = [100 + 10 * math.sin(i / 2) for i in range(48)]
TEXT = "The file could not be opened."
INPUT, HIDDEN, OUTPUT, INITIAL = 4, 8, 3, 0.25


def gru_model(folder: Path, seed: int = 0) -> None:
    """``folder/manifest.json`` and ``step.onnx``: ``(x [batch,4], h [batch,8]) -> (y [batch,3], h_next)``, one
    GRU step (ONNX's GRU operator) and a linear read-out, random weights; ``h`` starts at 0.25."""
    rng = np.random.default_rng(seed)
    weights = {"W": rng.normal(0, 0.5, (1, 3 * HIDDEN, INPUT)), "R": rng.normal(0, 0.5, (1, 3 * HIDDEN, HIDDEN)),
               "B": rng.normal(0, 0.1, (1, 6 * HIDDEN)), "Wo": rng.normal(0, 0.5, (HIDDEN, OUTPUT)),
               "axis0": np.array([0])}
    nodes = [helper.make_node("Unsqueeze", ["x", "axis0"], ["x3"]),
             helper.make_node("Unsqueeze", ["h", "axis0"], ["h3"]),
             helper.make_node("GRU", ["x3", "W", "R", "B", "", "h3"], ["", "h_next3"], hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["h_next3", "axis0"], ["h_next"]),
             helper.make_node("MatMul", ["h_next", "Wo"], ["y"])]
    initializers = [numpy_helper.from_array(v.astype(np.int64 if k == "axis0" else np.float32), k)
                    for k, v in weights.items()]
    graph = helper.make_graph(
        nodes, "gru_step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", INPUT]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUTPUT]),
         helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["batch", HIDDEN])], initializers)
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), folder / "step.onnx")

    def tensor(name: str, size: int) -> dict:
        return {"name": name, "dtype": "float32", "shape": ["batch", size]}

    manifest = {
        "format": "seqserve-manifest/1", "description": "a GRU step with random weights (tests/test_kserve.py)",
        "graphs": {"step": {"file": "step.onnx", "inputs": [tensor("x", INPUT), tensor("h", HIDDEN)],
                            "outputs": [tensor("y", OUTPUT), tensor("h_next", HIDDEN)]}},
        "state": [{"graph": "step", "input": "h", "output": "h_next", "shape": [HIDDEN], "dtype": "float32",
                   "initial": INITIAL}],
        "files": {"step.onnx": hashlib.sha256((folder / "step.onnx").read_bytes()).hexdigest()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def gru_loop(folder: Path, xs: np.ndarray) -> np.ndarray:
    """The graph run in a loop by ONNX Runtime, its state fed back: ``y`` of every step."""
    session = ort.InferenceSession(str(folder / "step.onnx"), providers=["CPUExecutionProvider"])
    h, ys = np.full((1, HIDDEN), INITIAL, dtype=np.float32), []
    for x in xs:
        y, h = session.run(["y", "h_next"], {"x": x[None].astype(np.float32), "h": h})
        ys.append(y[0])
    return np.array(ys)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in SHIPPED:
        (root / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
    gru_model(root / "gru" / "1")
    return root


CONFIG = Config(host="127.0.0.1", port=0, metrics_port=0, max_streams=80, max_text_chars=500, max_texts=8,
                max_horizon=24, grace_s=1.0)


@pytest.fixture(scope="module")
def running(repository: Path) -> Iterator[Running]:
    running = Running(replace(CONFIG, models=str(repository)))
    yield running
    running.stop()


@pytest.fixture()
def triton_client(running: Running) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(running.target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def seqserve(running: Running) -> Iterator[Client]:
    with Client(running.target, timeout=60) as client:
        yield client


def text_input(*texts: str, name: str = "TEXT") -> triton.InferInput:
    tensor = triton.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return tensor


def array_input(name: str, values: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return tensor


class Stream:
    """``tritonclient``'s stream with its callback's results in a queue."""

    def __init__(self, client: triton.InferenceServerClient) -> None:
        self.client, self.results = client, queue.Queue()
        client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def get(self) -> tuple[triton.InferResult | None, InferenceServerException | None]:
        return self.results.get(timeout=60)

    def result(self) -> triton.InferResult:
        result, error = self.get()
        assert error is None, error
        return result


def final(result: triton.InferResult) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


# --- the wire format ----------------------------------------------------------------------------------------------


def test_every_declared_field_matches_tritonclients_descriptors() -> None:
    """Our own .proto (package inference): every message, field number, type and label, every enum value and every
    RPC equals Triton's, as the tritonclient wheel ships them; what we do not declare is simply not served."""
    theirs = {**{m.full_name: m for m in service_pb2.DESCRIPTOR.message_types_by_name.values()},
              **{m.full_name: m for m in model_config_pb2.DESCRIPTOR.message_types_by_name.values()}}

    def messages(descriptor):
        yield descriptor
        for nested in descriptor.nested_types:
            yield from messages(nested)

    def find(name: str):
        top, *path = name.removeprefix("inference.").split(".")
        found = theirs["inference." + top]
        for part in path:
            found = found.nested_types_by_name[part]
        return found

    checked = 0
    for top in kserve_pb2.DESCRIPTOR.message_types_by_name.values():
        for ours in messages(top):
            other = find(ours.full_name)
            for field in ours.fields:
                match = other.fields_by_name[field.name]
                assert (field.number, field.type, field.is_repeated) == (match.number, match.type, match.is_repeated), \
                    field.full_name
                for kind in ("message_type", "enum_type"):
                    mine, its = getattr(field, kind), getattr(match, kind)
                    assert (mine and mine.full_name) == (its and its.full_name), field.full_name
                oneof = field.containing_oneof
                assert (oneof and oneof.name) == (match.containing_oneof and match.containing_oneof.name)
                checked += 1
    for enum in kserve_pb2.DESCRIPTOR.enum_types_by_name.values():
        other = model_config_pb2.DESCRIPTOR.enum_types_by_name[enum.name]
        assert {v.name: v.number for v in enum.values}.items() <= {v.name: v.number for v in other.values}.items()
    service = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    triton_service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == triton_service.full_name == "inference.GRPCInferenceService"
    for method in service.methods:
        match = triton_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name, method.client_streaming,
                method.server_streaming) == (match.input_type.full_name, match.output_type.full_name,
                                             match.client_streaming, match.server_streaming)
    assert checked > 80 and len(service.methods) == 10


# --- server, models, metadata -------------------------------------------------------------------------------------


def versions(repository: Path, name: str) -> list[str]:
    """The versions of a model in the repository, as KServe names them (oldest first)."""
    return sorted((p.name for p in (repository / name).iterdir() if p.name.isdigit()), key=int)


def test_liveness_readiness_and_server_metadata(triton_client: triton.InferenceServerClient,
                                                repository: Path) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    for name in (*SHIPPED, "gru"):
        assert triton_client.is_model_ready(name) and triton_client.is_model_ready(name, "1")
    assert not triton_client.is_model_ready("nope") and not triton_client.is_model_ready("sentiment", "9")
    metadata = triton_client.get_server_metadata()
    assert metadata.name == "seqserve" and "sequence" in metadata.extensions
    index = triton_client.get_model_repository_index()
    assert sorted((m.name, m.version, m.state) for m in index.models) == sorted(
        (name, version, "READY") for name in (*SHIPPED, "gru") for version in versions(repository, name))


def test_metadata_and_config_of_every_model_come_from_its_manifest(triton_client: triton.InferenceServerClient,
                                                                   repository: Path) -> None:
    def tensors(metadata) -> dict[str, tuple[str, list[int]]]:
        return {t.name: (t.datatype, list(t.shape)) for t in metadata}

    labels = load_model(repository / "sentiment" / "1").manifest.preprocessing.labels
    quantiles = load_model(repository / "forecast" / "1").manifest.preprocessing.quantiles
    expected = {
        "sentiment": ({"TEXT": ("BYTES", [-1])},
                      {"PROBABILITIES": ("FP32", [-1, len(labels)]), "LABEL": ("BYTES", [-1]),
                       "TOKENS": ("BYTES", [-1])}),
        "forecast": ({"HISTORY": ("FP64", [-1])},
                     {"POINT": ("FP64", [-1]), "QUANTILES": ("FP64", [-1, len(quantiles)]), "MONTH": ("INT32", [-1])}),
        "translation": ({"TEXT": ("BYTES", [1])}, {"TRANSLATION": ("BYTES", [1]), "TOKEN_IDS": ("INT64", [-1]),
                                                   "PIECES": ("BYTES", [-1]), "LOG_PROBS": ("FP32", [-1])}),
        # the graph's inputs and outputs that are not state, batch axis -1
        "gru": ({"x": ("FP32", [-1, INPUT])}, {"y": ("FP32", [-1, OUTPUT])}),
    }
    for name, (inputs, outputs) in expected.items():
        metadata = triton_client.get_model_metadata(name)
        assert (metadata.name, sorted(metadata.versions, key=int), metadata.platform) == (
            name, versions(repository, name), "seqserve")
        assert tensors(metadata.inputs) == inputs and tensors(metadata.outputs) == outputs, name
        config = triton_client.get_model_config(name).config
        assert config.name == name and [i.name for i in config.input] == list(inputs)
        assert config.HasField("sequence_batching") == (name != "translation")
        assert config.model_transaction_policy.decoupled == (name == "translation")
    config = triton_client.get_model_config("gru").config
    assert config.max_batch_size == CONFIG.max_batch and list(config.input[0].dims) == [INPUT]
    state = config.sequence_batching.state[0]
    assert (state.input_name, state.output_name, list(state.dims)) == ("h", "h_next", [HIDDEN])
    assert triton_client.get_model_config("sentiment").config.parameters["labels"].string_value == ",".join(labels)
    with pytest.raises(InferenceServerException, match="name 'nope' is not loaded") as error:
        triton_client.get_model_metadata("nope")
    assert error.value.status() == "StatusCode.NOT_FOUND"


# --- unary inference per task -------------------------------------------------------------------------------------


def test_unary_sentiment_equals_classify(triton_client: triton.InferenceServerClient, seqserve: Client) -> None:
    texts = ["A wonderful, moving film.", "Dull, lifeless and far too long."]
    result = triton_client.infer("sentiment", [text_input(*texts)])
    classified = seqserve.classify(texts)
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"),
                               [list(r.probabilities) for r in classified.results], atol=1e-6)
    assert [label.decode() for label in result.as_numpy("LABEL")] == [r.label for r in classified.results]
    assert result.get_response().model_version == str(newest("sentiment").version)
    only = triton_client.infer("sentiment", [text_input(texts[0])], outputs=[triton.InferRequestedOutput("LABEL")])
    assert only.as_numpy("PROBABILITIES") is None and only.as_numpy("LABEL").tolist() == [b"fresh"]


def test_unary_forecast_equals_forecast(triton_client: triton.InferenceServerClient, seqserve: Client) -> None:
    result = triton_client.infer("forecast", [array_input("HISTORY", np.array(HISTORY), "FP64")],
                                 parameters={"horizon": 6, "start_month": 4})
    steps = list(seqserve.forecast(HISTORY, 6, start_month=4))
    np.testing.assert_allclose(result.as_numpy("QUANTILES"), [list(s.quantiles) for s in steps], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("POINT"), [s.point for s in steps], rtol=1e-6)
    assert result.as_numpy("MONTH").tolist() == [s.month for s in steps]


def test_unary_translation_equals_translate_batch(triton_client: triton.InferenceServerClient,
                                                  seqserve: Client) -> None:
    for beam in (1, 4):
        result = triton_client.infer("translation", [text_input(TEXT)], parameters={"beam": beam})
        expected = seqserve.translate_batch([TEXT], beam=beam).translations[0]
        assert result.as_numpy("TRANSLATION")[0].decode() == expected.text
        assert result.as_numpy("TOKEN_IDS").tolist() == list(expected.token_ids)


# --- sequences with implicit state --------------------------------------------------------------------------------


def test_sentiment_sequence_equals_stream_sentiment(triton_client: triton.InferenceServerClient,
                                                    seqserve: Client) -> None:
    """START, middle and END flags, an integer id with ModelInfer and a string id on a stream: the running
    probabilities of every token equal StreamSentiment's for the same chunks (a chunk may split a word)."""
    chunks = ["It's a wonder", "ful film, isn't", " it? Not", " at all dull."]
    expected = [(u.token, list(u.probabilities)) for u in seqserve.stream_sentiment(chunks)]
    flags = [{"sequence_start": i == 0, "sequence_end": i == len(chunks) - 1} for i in range(len(chunks))]

    def tokens(results: list[triton.InferResult]) -> list[tuple[str, list[float]]]:
        return [(token.decode(), probabilities.tolist()) for r in results
                for token, probabilities in zip(r.as_numpy("TOKENS"), r.as_numpy("PROBABILITIES"), strict=True)]

    unary = [triton_client.infer("sentiment", [text_input(chunk)], sequence_id=1001, **flag)
             for chunk, flag in zip(chunks, flags, strict=True)]
    stream = Stream(triton_client)
    for index, (chunk, flag) in enumerate(zip(chunks, flags, strict=True)):
        triton_client.async_stream_infer("sentiment", [text_input(chunk)], request_id=str(index),
                                         sequence_id="reader-7", **flag)
    streamed = [stream.result() for _ in chunks]
    triton_client.stop_stream()
    assert [r.get_response().id for r in streamed] == ["0", "1", "2", "3"]  # in order, ids echoed
    assert all(final(r) for r in streamed)
    for results in (unary, streamed):
        got = tokens(results)
        assert [t for t, _ in got] == [t for t, _ in expected]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], atol=1e-5)


def test_forecast_sequence_equals_observe(triton_client: triton.InferenceServerClient, seqserve: Client) -> None:
    first = forecast_pb2.Observation(model=common_pb2.ModelRef(name="forecast"), values=HISTORY, horizon=1,
                                     start_month=3)
    updates = list(seqserve.observe([first, forecast_pb2.Observation(values=[101.0, 97.5], horizon=2)]))
    opened = triton_client.infer("forecast", [array_input("HISTORY", np.array(HISTORY), "FP64")], sequence_id=5,
                                 sequence_start=True, parameters={"start_month": 3})
    later = triton_client.infer("forecast", [array_input("HISTORY", np.array([101.0, 97.5]), "FP64")],
                                sequence_id=5, sequence_end=True, parameters={"horizon": 2})
    for result, update in ((opened, updates[0]), (later, updates[1])):
        np.testing.assert_allclose(result.as_numpy("QUANTILES"), [list(s.quantiles) for s in update.steps],
                                   rtol=1e-6)
        assert result.as_numpy("MONTH").tolist() == [s.month for s in update.steps]


def test_generic_stateful_model_equals_its_graph_in_a_loop(triton_client: triton.InferenceServerClient,
                                                           repository: Path, running: Running) -> None:
    """Three interleaved GRU sequences on one stream (ids int and str): each equals the graph run in a loop
    with its state fed back; every step went through the engine's scheduler."""
    rng = np.random.default_rng(1)
    sequences = {7: rng.normal(size=(6, INPUT)), "b": rng.normal(size=(4, INPUT)), 9: rng.normal(size=(5, INPUT))}
    rows_before = running.sample("seqserve_batch_size_sum", model="gru")
    stream = Stream(triton_client)
    for step in range(6):
        for sequence_id, xs in sequences.items():
            if step < len(xs):
                triton_client.async_stream_infer(
                    "gru", [array_input("x", xs[step][None].astype(np.float32), "FP32")],
                    request_id=f"{sequence_id}/{step}", sequence_id=sequence_id, sequence_start=step == 0,
                    sequence_end=step == len(xs) - 1)
    results = [stream.result() for _ in range(sum(len(xs) for xs in sequences.values()))]
    triton_client.stop_stream()
    got = {r.get_response().id: r.as_numpy("y")[0] for r in results}
    for sequence_id, xs in sequences.items():
        expected = gru_loop(repository / "gru" / "1", xs)
        np.testing.assert_allclose([got[f"{sequence_id}/{step}"] for step in range(len(xs))], expected, atol=1e-5)
    assert running.sample("seqserve_batch_size_sum", model="gru") - rows_before == 15
    assert wait_for(lambda: running.in_use() == 0)


# --- decoupled streaming ------------------------------------------------------------------------------------------


def test_decoupled_translation_equals_translate(triton_client: triton.InferenceServerClient,
                                                seqserve: Client) -> None:
    """One response per token, then an empty final one; ids echoed; max_tokens_per_message packs tokens, and
    fill_messages fills them; a bad request's error arrives in error_message and the stream goes on serving."""
    expected = [(t.token_id, t.piece) for t in seqserve.translate_tokens(TEXT)]
    stream = Stream(triton_client)
    triton_client.async_stream_infer("translation", [text_input(TEXT)], request_id="t-1")
    responses = []
    while not responses or not final(responses[-1]):
        responses.append(stream.result())
    assert all(r.get_response().id == "t-1" for r in responses)
    assert responses[-1].as_numpy("TOKEN_IDS") is None and not any(final(r) for r in responses[:-1])
    tokens = [(int(i), p.decode()) for r in responses[:-1]
              for i, p in zip(r.as_numpy("TOKEN_IDS"), r.as_numpy("PIECES"), strict=True)]
    assert tokens == expected and all(len(r.as_numpy("TOKEN_IDS")) == 1 for r in responses[:-1])

    triton_client.async_stream_infer("translation", [text_input("")], request_id="bad")
    result, error = stream.get()
    assert result is None and "TEXT is empty" in error.message()
    triton_client.async_stream_infer("translation", [text_input(TEXT)], request_id="t-2",
                                     parameters={"max_tokens_per_message": 4})
    packed = []
    while not packed or not final(packed[-1]):
        packed.append(stream.result())
    assert [int(i) for r in packed[:-1] for i in r.as_numpy("TOKEN_IDS")] == [i for i, _ in expected]
    assert all(1 <= len(r.as_numpy("TOKEN_IDS")) <= 4 for r in packed[:-1])
    triton_client.async_stream_infer("translation", [text_input(TEXT)], request_id="t-3",
                                     parameters={"max_tokens_per_message": 4, "fill_messages": True})
    filled = []
    while not filled or not final(filled[-1]):
        filled.append(stream.result())
    triton_client.stop_stream()
    counts = [len(r.as_numpy("TOKEN_IDS")) for r in filled[:-1]]
    assert [int(i) for r in filled[:-1] for i in r.as_numpy("TOKEN_IDS")] == [i for i, _ in expected]
    assert counts[0] == 1 and all(c == 4 for c in counts[1:-1]) and 1 <= counts[-1] <= 4


def test_cancelling_a_stream_frees_every_slot_of_it(triton_client: triton.InferenceServerClient,
                                                    running: Running) -> None:
    """stop_stream(cancel_requests=True) with three open sentiment sequences and a translation being decoded: all
    their slots are freed, the gauges return to zero and the sequences are counted as cancelled."""
    assert wait_for(lambda: running.in_use() == 0)

    def ended() -> float:
        return running.sample("seqserve_sessions_ended_total", protocol="kserve", method="ModelStreamInfer",
                             reason="cancelled")

    before = ended()
    stream = Stream(triton_client)
    for sequence_id in (31, 32, "thirty-three"):
        triton_client.async_stream_infer("sentiment", [text_input("so good ")], sequence_id=sequence_id,
                                         sequence_start=True)
    for _ in range(3):
        stream.result()
    clause = "Select the cells that you want to copy, then choose Edit - Copy to put them on the clipboard"
    long = ", and ".join([clause] * 3) + "."  # one sentence: one slot
    triton_client.async_stream_infer("translation", [text_input(long)], request_id="long")
    stream.result()  # its first token: it is decoding now
    assert running.in_use() == 4
    def active(model: str) -> float:
        return running.sample("seqserve_active_streams", protocol="kserve", model=model, method="ModelStreamInfer")

    assert (active("sentiment"), active("translation")) == (3, 1)
    triton_client.stop_stream(cancel_requests=True)
    assert wait_for(lambda: running.in_use() == 0)
    assert wait_for(lambda: (active("sentiment"), active("translation")) == (0, 0))
    assert wait_for(lambda: ended() == before + 4)
    # the ids are free again
    result = triton_client.infer("sentiment", [text_input("fine")], sequence_id=31, sequence_start=True,
                                 sequence_end=True)
    assert result.as_numpy("TOKENS").tolist() == [b"fine"]


# --- errors -------------------------------------------------------------------------------------------------------


def bad_requests() -> list[tuple[dict, str]]:
    text = text_input("ok")
    nan = array_input("HISTORY", np.array([1.0, math.nan] * 20), "FP64")
    x = array_input("x", np.zeros((1, INPUT), dtype=np.float32), "FP32")
    return [
        (dict(model_name="nope", inputs=[text]), "model_name 'nope' is not loaded"),
        (dict(model_name="sentiment", model_version="9", inputs=[text]),
         "model_version 9 of 'sentiment' is not loaded"),
        (dict(model_name="sentiment", model_version="v1", inputs=[text]), "version 'v1' is not a version number"),
        (dict(model_name="sentiment", inputs=[text_input("ok", name="WORDS")]),
         "inputs[0]: 'WORDS' is not an input of model 'sentiment' (its inputs: ['TEXT'])"),
        (dict(model_name="sentiment", inputs=[]), "input 'TEXT' is missing"),
        (dict(model_name="sentiment", inputs=[text_input("")]), "TEXT[0] is empty"),
        (dict(model_name="sentiment", inputs=[text_input("x" * 501)]), "TEXT[0] has 501 characters, the limit is 500"),
        (dict(model_name="sentiment", inputs=[text_input(*["ok"] * 9)]),
         "TEXT (their number) is 9, it must be between 1 and 8"),
        (dict(model_name="sentiment", inputs=[text], outputs=[triton.InferRequestedOutput("NOPE")]),
         "'NOPE' is not an output of model 'sentiment'"),
        (dict(model_name="forecast", inputs=[nan]), "HISTORY[1] is nan"),
        (dict(model_name="forecast", inputs=[array_input("HISTORY", np.ones(40), "FP64")],
              parameters={"horizon": 25}), "horizon is 25, it must be between 1 and 24"),
        (dict(model_name="forecast", inputs=[array_input("HISTORY", np.ones(40, dtype=np.float32), "FP32")]),
         "input 'HISTORY' must be FP64"),
        (dict(model_name="translation", inputs=[text], parameters={"beam": 9}),
         "parameters.beam is 9, it must be between 1 and 8"),
        (dict(model_name="translation", inputs=[text], parameters={"beam": "wide"}),
         "parameters['beam'] is 'wide', expected an integer"),
        (dict(model_name="translation", inputs=[text_input("a", "b")]),
         "TEXT (its number of elements) is 2, it must be between 1 and 1"),
        (dict(model_name="translation", inputs=[text], sequence_id=3, sequence_start=True),
         "model 'translation' does not take sequences"),
        (dict(model_name="sentiment", inputs=[text], sequence_id=404),
         "inference request for sequence 404 to model 'sentiment' must specify the START flag on the first request "
         "of the sequence"),
        (dict(model_name="gru", inputs=[x]),
         "inference request to model 'gru' must specify a non-zero or non-empty correlation ID"),
        (dict(model_name="gru", inputs=[array_input("x", np.zeros((2, INPUT), dtype=np.float32), "FP32")],
              sequence_id=1, sequence_start=True, sequence_end=True), "must specify batch-size 1"),
        (dict(model_name="gru", inputs=[array_input("x", np.zeros((1, 5), dtype=np.float32), "FP32")],
              sequence_id=1, sequence_start=True, sequence_end=True),
         "input 'x' has shape [1, 5], a step takes [1, 4]"),
        (dict(model_name="gru", inputs=[array_input("x", np.zeros((1, INPUT)), "FP64")], sequence_id=1,
              sequence_start=True, sequence_end=True), "input 'x' is float64, the model takes float32"),
    ]


@pytest.mark.parametrize("index", range(len(bad_requests())))
def test_bad_requests_are_refused_with_the_field_and_the_limit(triton_client: triton.InferenceServerClient,
                                                               running: Running, index: int) -> None:
    """Each with INVALID_ARGUMENT (NOT_FOUND for an unknown model or version) on ModelInfer, and in error_message
    on a stream, which goes on serving; no slot stays taken."""
    kwargs, message = bad_requests()[index]
    with pytest.raises(InferenceServerException) as error:
        triton_client.infer(**kwargs)
    assert message in error.value.message()
    assert error.value.status() == ("StatusCode.NOT_FOUND" if "is not loaded" in message
                                    else "StatusCode.INVALID_ARGUMENT")
    stream = Stream(triton_client)
    triton_client.async_stream_infer(**kwargs, request_id="bad")
    result, failure = stream.get()
    assert result is None and message in failure.message()
    triton_client.async_stream_infer("sentiment", [text_input("still serving")], request_id="good")
    assert stream.result().get_response().id == "good"
    triton_client.stop_stream()
    assert wait_for(lambda: running.in_use() == 0)


def test_sequence_id_conflicts_and_reuse(triton_client: triton.InferenceServerClient, running: Running) -> None:
    triton_client.infer("sentiment", [text_input("one ")], sequence_id="dup", sequence_start=True)
    with pytest.raises(InferenceServerException, match="sequence dup to model 'sentiment' has a conflict"):
        triton_client.infer("sentiment", [text_input("two ")], sequence_id="dup", sequence_start=True)
    # the open sequence is untouched by the refused START, and ends normally
    last = triton_client.infer("sentiment", [text_input("three")], sequence_id="dup", sequence_end=True)
    assert last.as_numpy("TOKENS").tolist() == [b"three"]
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        triton_client.infer("sentiment", [text_input("four")], sequence_id="dup")
    assert wait_for(lambda: running.in_use() == 0)


def test_malformed_raw_tensors_are_refused(running: Running) -> None:
    """What tritonclient never sends, with the generated stub: blobs that do not fit the shape or datatype, flags
    without a sequence id."""
    with grpc.insecure_channel(running.target) as channel:
        stub = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = kserve_pb2.ModelInferRequest.InferInputTensor
        cases = [
            (tensor(name="TEXT", datatype="BYTES", shape=[1]), [b"\x09\x00\x00\x00short"],
             "a BYTES element of 9 bytes runs past the end"),
            (tensor(name="HISTORY", datatype="FP64", shape=[30]), [b"\x00" * 16],
             "shape [30] of FP64 needs 240 bytes, raw_input_contents[0] has 16"),
            (tensor(name="HISTORY", datatype="FP16", shape=[1]), [b"\x00\x00"], "datatype 'FP16' is not one of"),
            (tensor(name="TEXT", datatype="BYTES", shape=[1]), [], "shape [1] holds 1 elements, 0 were sent"),
            (tensor(name="TEXT", datatype="BYTES", shape=[1]), [b"\x02\x00\x00\x00ok"],
             "parameters['sequence_start'] and ['sequence_end'] need a parameters['sequence_id']"),
        ]
        for input_tensor, raw, message in cases:
            model = "forecast" if input_tensor.name == "HISTORY" else "sentiment"
            request = kserve_pb2.ModelInferRequest(model_name=model, inputs=[input_tensor], raw_input_contents=raw)
            if "sequence_id" in message:
                request.parameters["sequence_start"].bool_param = True
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(request, timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()
        # typed contents instead of raw blobs are read too
        contents = kserve_pb2.InferTensorContents(bytes_contents=[b"A wonderful film."])
        request = kserve_pb2.ModelInferRequest(model_name="sentiment", inputs=[
            tensor(name="TEXT", datatype="BYTES", shape=[1], contents=contents)])
        response = stub.ModelInfer(request, timeout=30)
        assert [o.name for o in response.outputs] == ["PROBABILITIES", "LABEL"]
        assert np.frombuffer(response.raw_output_contents[0], dtype="<f4").shape == (2,)


# --- idle sequences, metrics --------------------------------------------------------------------------------------


def test_an_idle_sequence_ends_is_counted_and_logged(repository: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """One state slot (max_streams 1): a second sequence is refused until the first one's idle timeout frees it."""
    only_gru = tmp_path / "models"
    only_gru.mkdir()
    (only_gru / "gru").symlink_to(repository / "gru", target_is_directory=True)
    small = Running(replace(CONFIG, models=str(only_gru), sequence_idle_timeout_s=1.0, max_streams=1))
    try:
        client = triton.InferenceServerClient(small.target)
        x = array_input("x", np.zeros((1, INPUT), dtype=np.float32), "FP32")
        with caplog.at_level(logging.WARNING, logger="server.services.kserve.sequences"):
            client.infer("gru", [x], sequence_id=11, sequence_start=True)
            assert small.in_use() == 1
            with pytest.raises(InferenceServerException, match="1 stream slot wanted, 0 of 1 free") as error:
                client.infer("gru", [x], sequence_id=99, sequence_start=True)
            assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            with pytest.raises(InferenceServerException, match="sequence 99 to model 'gru' must specify the START"):
                client.infer("gru", [x], sequence_id=99)  # the refused START opened nothing
            assert wait_for(lambda: small.sample("seqserve_sessions_ended_total", reason="idle_timeout") == 1)
        assert small.in_use() == 0 and small.sample("seqserve_active_streams", model="gru") == 0
        assert "sequence 11 to model 'gru': no request for 1 s (sequence_idle_timeout_s)" in caplog.text
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            client.infer("gru", [x], sequence_id=11)
        busy = time.monotonic()  # a sequence that keeps sending within the timeout stays open
        client.infer("gru", [x], sequence_id=12, sequence_start=True)
        while time.monotonic() - busy < 1.5:
            time.sleep(0.1)
            client.infer("gru", [x], sequence_id=12)
        client.infer("gru", [x], sequence_id=12, sequence_end=True)
        assert small.sample("seqserve_sessions_ended_total", reason="completed", model="gru") == 1
        client.close()
    finally:
        small.stop()


def test_one_timer_ends_each_idle_sequence_at_its_own_time() -> None:
    """Three sequences go idle 0.2 s apart (timeout 0.5 s); the second gets a request meanwhile. Each ends once idle
    for the timeout, from one timer that holds no request's context."""

    async def scenario() -> tuple[dict[int, float], int]:
        sequences, ended, loop = Sequences(Metrics(), 0.5), {}, asyncio.get_running_loop()
        marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
        marker.set("a request's context")

        class Held(contextlib.AbstractContextManager):
            def __init__(self, number: int) -> None:
                self.number = number

            def __exit__(self, *exc: object) -> None:
                ended[self.number] = loop.time() - started

        async def request(number: int, start: bool) -> None:
            turn = sequences.admit(("m", 1, number), start, False, None, {"model": "m", "method": "x", "protocol": "k"})
            await sequences.run(turn, lambda: Held(number), lambda state, first: asyncio.sleep(0))

        started = loop.time()
        for number in (1, 2, 3):
            await request(number, True)
            await asyncio.sleep(0.2)
        assert sequences.idle.timer is not None and marker not in sequences.idle.timer._context  # an empty context
        await request(2, False)  # at 0.6 s: sequence 2 is idle from here
        await asyncio.sleep(1.0)
        return ended, len(sequences.idle.armed) + len(sequences.open)

    ended, left = asyncio.run(scenario())
    assert left == 0 and sorted(ended) == [1, 2, 3]
    for number, expected in ((1, 0.5), (3, 0.9), (2, 1.1)):
        assert expected - 0.01 < ended[number] < expected + 0.15, ended


def test_both_protocols_count_in_the_same_series(triton_client: triton.InferenceServerClient, seqserve: Client,
                                                 running: Running) -> None:
    def requests(protocol: str, method: str) -> float:
        return running.sample("seqserve_requests_total", model="sentiment", protocol=protocol, method=method,
                              code="OK")

    def tokens(protocol: str, method: str) -> float:
        return running.sample("seqserve_tokens_total", model="translation", protocol=protocol, method=method)

    before = (requests("kserve", "ModelInfer"), requests("seqserve", "Classify"))
    tokens_before = (tokens("kserve", "ModelInfer"), tokens("seqserve", "TranslateBatch"))
    triton_client.infer("sentiment", [text_input("Good.")])
    seqserve.classify(["Good."])
    triton_client.infer("translation", [text_input(TEXT)])
    count = len(seqserve.translate_batch([TEXT]).translations[0].token_ids)
    assert wait_for(lambda: (requests("kserve", "ModelInfer"), requests("seqserve", "Classify"))
                    == tuple(b + 1 for b in before))
    assert count > 0 and wait_for(lambda: (tokens("kserve", "ModelInfer"), tokens("seqserve", "TranslateBatch"))
                                  == tuple(b + count for b in tokens_before))
    assert wait_for(lambda: running.sample("seqserve_active_streams", protocol="kserve") == 0)
    statistics = triton_client.get_inference_statistics("sentiment", str(newest("sentiment").version)).model_stats[0]
    assert statistics.inference_stats.success.count >= 1 and statistics.inference_stats.success.ns > 0


def test_a_request_queued_behind_a_failed_start_is_refused(triton_client: triton.InferenceServerClient,
                                                           running: Running) -> None:
    """On one stream a sequence's requests run in order: a START that fails (too short a history) ends the
    sequence, and the request behind it is refused (if it arrived after the failure: as an unknown id)."""
    stream = Stream(triton_client)
    triton_client.async_stream_infer("forecast", [array_input("HISTORY", np.ones(3), "FP64")], request_id="start",
                                     sequence_id="f", sequence_start=True)
    triton_client.async_stream_infer("forecast", [array_input("HISTORY", np.ones(1), "FP64")], request_id="next",
                                     sequence_id="f", sequence_end=True)
    (first, start_error), (second, next_error) = stream.get(), stream.get()
    triton_client.stop_stream()
    assert first is None and "HISTORY (its length) is 3, it must be between 24 and" in start_error.message()
    assert second is None and ("sequence f to model 'forecast' has ended (error): start it again" in
                               next_error.message() or "must specify the START flag" in next_error.message())
    assert wait_for(lambda: running.in_use() == 0)
