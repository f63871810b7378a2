"""Resume tokens of KServe v2 sequences (docs/triton.md, Resume tokens), driven by the stock ``tritonclient``: a
sequence frozen mid-way on one server process continues on a second process with the same keys file, equal to the
uninterrupted sequence bit for bit (sentiment, forecast and a generic stateful GRU); a tampered token, a token on a
server without keys, and a request for a token where none can be made are refused with the parameter named."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import test_kserve as kserve_tests
import tritonclient.grpc as triton
from servers import CONFIG, MODELS, Process, Running
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.skipif(not all((MODELS / m).is_dir() for m in ("sentiment", "forecast")),
                                reason=f"needs the shipped models in {MODELS}")
WANT, TOKEN = "seqserve_want_resume_token", "seqserve_resume_token"
CHUNKS = ["It's a wonder", "ful film, isn't", " it? Not", " at all dull, and", " never once sly."]
HISTORY = kserve_tests.HISTORY


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in ("sentiment", "forecast"):
        (root / name).symlink_to(MODELS / name, target_is_directory=True)
    kserve_tests.gru_model(root / "gru" / "1")
    return root


@pytest.fixture(scope="module")
def pair(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two ``python -m server`` processes with the same keys file."""
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"k1 {secrets.token_hex(32)}\n")
    flags = ("--models", str(repository), "--resume-keys-file", str(keys))
    first = Process(*flags)
    try:
        second = Process(*flags)
    except Exception:
        first.stop()
        raise
    yield first.target, second.target
    first.stop()
    second.stop()


@pytest.fixture()
def clients(pair: tuple[str, str]) -> Iterator[tuple[triton.InferenceServerClient, triton.InferenceServerClient]]:
    first, second = (triton.InferenceServerClient(target) for target in pair)
    yield first, second
    first.close()
    second.close()


def token_of(result: triton.InferResult) -> str:
    return result.get_response().parameters[TOKEN].string_param


def text(chunk: str) -> triton.InferInput:
    return kserve_tests.text_input(chunk)


def sentiment(results: list[triton.InferResult]) -> tuple[list[bytes], np.ndarray]:
    return ([t for r in results for t in r.as_numpy("TOKENS")],
            np.concatenate([r.as_numpy("PROBABILITIES") for r in results]))


def test_a_sentiment_sequence_frozen_on_one_process_continues_on_another_bit_for_bit(clients) -> None:
    first, second = clients
    last = len(CHUNKS) - 1
    whole = [first.infer("sentiment", [text(c)], sequence_id=11, sequence_start=i == 0, sequence_end=i == last)
             for i, c in enumerate(CHUNKS)]
    before = [first.infer("sentiment", [text(c)], sequence_id=12, sequence_start=i == 0,
                          parameters={WANT: True} if i == 1 else None) for i, c in enumerate(CHUNKS[:2])]
    token = token_of(before[1])
    assert token and not token_of(before[0])  # only the request that asked
    after = [second.infer("sentiment", [text(c)], sequence_id=12, sequence_start=i == 2, sequence_end=i == last,
                          parameters={TOKEN: token} if i == 2 else None) for i, c in enumerate(CHUNKS) if i >= 2]
    tokens, probabilities = sentiment(whole)
    resumed_tokens, resumed = sentiment(before + after)
    assert resumed_tokens == tokens
    assert np.array_equal(resumed, probabilities)  # bit for bit


def test_a_forecast_sequence_resumes_bit_for_bit(clients) -> None:
    first, second = clients
    batches = [np.array(HISTORY), np.array([101.0, 97.5]), np.array([99.0]), np.array([103.25, 104.0])]

    def infer(client, index, sequence_id, **kwargs):
        return client.infer("forecast", [kserve_tests.array_input("HISTORY", batches[index], "FP64")],
                            sequence_id=sequence_id, **kwargs)

    params = [{"start_month": 3}, {"horizon": 2}, {"horizon": 3}, {"horizon": 2}]
    whole = [infer(first, i, 21, sequence_start=i == 0, sequence_end=i == 3, parameters=params[i]) for i in range(4)]
    before = [infer(first, 0, 22, sequence_start=True, parameters=params[0]),
              infer(first, 1, 22, parameters=params[1] | {WANT: True})]
    after = [infer(second, 2, 22, sequence_start=True, parameters=params[2] | {TOKEN: token_of(before[1])}),
             infer(second, 3, 22, sequence_end=True, parameters=params[3])]
    for expected, got in zip(whole, before + after, strict=True):
        for name in ("POINT", "QUANTILES", "MONTH"):
            assert np.array_equal(got.as_numpy(name), expected.as_numpy(name)), name


def test_a_generic_stateful_sequence_resumes_on_a_stream(clients, repository: Path) -> None:
    """On ``ModelStreamInfer``: a token every step (periodic tokens), the sequence cut after step 3 and resumed from
    its last token; equal to the graph run in a loop."""
    first, second = clients
    xs = np.random.default_rng(5).normal(size=(7, kserve_tests.INPUT)).astype(np.float32)

    def step(client, stream, index, **kwargs):
        client.async_stream_infer("gru", [kserve_tests.array_input("x", xs[index][None], "FP32")], sequence_id="g",
                                  **kwargs)
        return stream.result()

    stream = kserve_tests.Stream(first)
    before = [step(first, stream, i, sequence_start=i == 0, parameters={WANT: True}) for i in range(3)]
    first.stop_stream()
    stream = kserve_tests.Stream(second)
    after = [step(second, stream, i, sequence_start=i == 3, sequence_end=i == 6,
                  parameters={TOKEN: token_of(before[-1])} if i == 3 else None) for i in range(3, 7)]
    second.stop_stream()
    assert all(token_of(r) for r in before)
    got = np.array([r.as_numpy("y")[0] for r in before + after])
    np.testing.assert_allclose(got, kserve_tests.gru_loop(repository / "gru" / "1", xs), atol=1e-5)


def refusal(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value


def test_tampered_and_misplaced_tokens_are_refused_naming_the_parameter(clients) -> None:
    first, second = clients
    first.infer("sentiment", [text(CHUNKS[0])], sequence_id=31, sequence_start=True)
    token = token_of(first.infer("sentiment", [text(CHUNKS[1])], sequence_id=31, parameters={WANT: True}))
    raw = bytearray(base64.b64decode(token))
    raw[-40] ^= 1  # in the body's state tensor, before the 32-byte MAC
    cases = [
        (base64.b64encode(bytes(raw)).decode(), {}, "INVALID_ARGUMENT", "MAC does not match"),
        ("not base64!", {}, "INVALID_ARGUMENT", "is not base64"),
        (token, {"model": "forecast"}, "INVALID_ARGUMENT", "a token of a sentiment stream"),
    ]
    for value, where, code, reason in cases:
        model = where.get("model", "sentiment")
        inputs = [text(CHUNKS[2])] if model == "sentiment" else [
            kserve_tests.array_input("HISTORY", np.array([1.0]), "FP64")]
        error = refusal(lambda m=model, i=inputs, v=value: second.infer(m, i, sequence_id=32, sequence_start=True,
                                                                         parameters={TOKEN: v}))
        assert error.status() == f"StatusCode.{code}", error
        assert f"parameters['{TOKEN}']" in error.message() and reason in error.message(), error.message()
    error = refusal(lambda: second.infer("sentiment", [text(CHUNKS[2])], sequence_id=33, parameters={TOKEN: token}))
    assert "START" in error.message() or "sequence_start" in error.message(), error.message()
    error = refusal(lambda: first.infer("sentiment", [text("x")], parameters={WANT: True}))
    assert "sequence_id" in error.message(), error.message()
    first.infer("sentiment", [text(CHUNKS[2])], sequence_id=31, sequence_end=True)
    # the real token still works
    second.infer("sentiment", [text(CHUNKS[2])], sequence_id=34, sequence_start=True, sequence_end=True,
                 parameters={TOKEN: token})


def test_a_server_without_keys_refuses_tokens_with_failed_precondition(clients, repository: Path) -> None:
    first, _ = clients
    first.infer("sentiment", [text(CHUNKS[0])], sequence_id=41, sequence_start=True)
    token = token_of(first.infer("sentiment", [text(CHUNKS[1])], sequence_id=41, sequence_end=False,
                                 parameters={WANT: True}))
    first.infer("sentiment", [text(CHUNKS[2])], sequence_id=41, sequence_end=True)
    off = Running(replace(CONFIG, models=str(repository)))
    try:
        client = triton.InferenceServerClient(off.target)
        for parameters in ({TOKEN: token}, {WANT: True}):
            error = refusal(lambda p=parameters: client.infer("sentiment", [text(CHUNKS[2])], sequence_id=42,
                                                              sequence_start=True, parameters=p))
            assert error.status() == "StatusCode.FAILED_PRECONDITION", error
            assert "resume tokens are off" in error.message() and next(iter(parameters)) in error.message()
        client.close()
    finally:
        off.stop()
