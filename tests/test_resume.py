"""Resume tokens (server/resume.py): a stream frozen on one server process continues on another with the same key,
equal to the uninterrupted run bit for bit, for StreamSentiment, Observe and greedy Translate; and every way a
token is refused. Inputs are real: Rotten Tomatoes test snippets, aus_retail series, LibreOffice help sentences."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import CONFIG, MODELS, Process, Running

from client import Client
from protos.seqserve.v1 import (
    common_pb2,
    forecast_pb2,
    forecast_pb2_grpc,
    resume_pb2,
    sentiment_pb2,
    sentiment_pb2_grpc,
    translate_pb2,
    translate_pb2_grpc,
)
from server.config import Config
from server.resume import read_keys
from training.forecast_data import load_panel
from training.sentiment_data import split_snippets
from training.translation_data import read_tsv

pytestmark = pytest.mark.skipif(not all((MODELS / m).is_dir() for m in ("sentiment", "forecast", "translation")),
                                reason=f"needs the shipped models in {MODELS}")


def write_keys(path: Path, *ids: str) -> Path:
    path.write_text("".join(f"{key_id} {secrets.token_hex(32)}\n" for key_id in ids))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_keys(tmp_path_factory.mktemp("resume") / "keys", "k2", "k1")


@pytest.fixture(scope="module")
def pair(keys: Path) -> Iterator[tuple[str, str]]:
    """Two ``python -m server`` processes with the same keys."""
    first = Process("--resume-keys-file", str(keys))
    try:
        second = Process("--resume-keys-file", str(keys))
    except Exception:
        first.stop()
        raise
    yield first.target, second.target
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> list[str]:
    return split_snippets(data_dir / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2")["test"].texts


def ref(name: str) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name)


def chunks_of(text: str, size: int = 9) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def sentiment_run(target: str, messages: list[sentiment_pb2.SentimentChunk]) -> list[sentiment_pb2.SentimentUpdate]:
    with grpc.insecure_channel(target) as channel:
        return list(sentiment_pb2_grpc.SentimentStub(channel).StreamSentiment(iter(messages), timeout=60))


def first_token(responses: grpc.Call) -> tuple[list, bytes]:
    """The responses up to the first that carries a resume token (which ends the list), and that token; then the
    call is cancelled: the client goes away as if its server had."""
    seen = []
    for response in responses:
        seen.append(response)
        if response.resume_token:
            responses.cancel()
            return seen, response.resume_token
    raise AssertionError("no resume token came")


def test_sentiment_resumes_on_another_process_bit_for_bit(pair: tuple[str, str], texts: list[str]) -> None:
    text = next(t for t in texts if len(t) > 120)
    parts = chunks_of(text)
    whole = sentiment_run(pair[0], [sentiment_pb2.SentimentChunk(model=ref("sentiment"), text=parts[0])]
                          + [sentiment_pb2.SentimentChunk(text=p) for p in parts[1:]])
    cut = len(parts) // 2
    messages = [sentiment_pb2.SentimentChunk(model=ref("sentiment") if i == 0 else None, text=p,
                                             want_resume_token=i == cut - 1) for i, p in enumerate(parts[:cut])]
    with grpc.insecure_channel(pair[0]) as channel:
        responses = sentiment_pb2_grpc.SentimentStub(channel).StreamSentiment(
            iter(messages + [sentiment_pb2.SentimentChunk(text=p) for p in parts[cut:]]), timeout=60)
        # the iterator would send every chunk: only those before the token count, the token says how many
        before, token = first_token(responses)
    assert before[-1].chunks_read == cut and not before[-1].token
    resumed = sentiment_run(pair[1], [sentiment_pb2.SentimentChunk(resume_token=token, text=parts[cut])]
                            + [sentiment_pb2.SentimentChunk(text=p) for p in parts[cut + 1 :]])
    assert [m.SerializeToString() for m in before[:-1] + resumed] == [m.SerializeToString() for m in whole]


def test_observe_resumes_on_another_process_bit_for_bit(pair: tuple[str, str], data_dir: Path) -> None:
    series = load_panel(data_dir / "forecast" / "aus_retail.csv").values[5]
    history, later = series[:-12].tolist(), series[-12:].tolist()
    first = forecast_pb2.Observation(model=ref("forecast"), values=history, start_month=3, horizon=6,
                                     quantiles=[0.1, 0.5, 0.9])
    messages = [first] + [forecast_pb2.Observation(values=later[i : i + 2], horizon=6) for i in range(0, 12, 2)]
    with grpc.insecure_channel(pair[0]) as channel:
        stub = forecast_pb2_grpc.ForecastStub(channel)
        whole = list(stub.Observe(iter(messages), timeout=60))
        asking = list(messages[:3])
        asking[2] = forecast_pb2.Observation(values=later[2:4], horizon=6, want_resume_token=True)
        before, token = first_token(stub.Observe(iter(asking + messages[3:]), timeout=60))
    assert len(before) == 3
    resumed_first = forecast_pb2.Observation(resume_token=token, values=later[4:6], horizon=6,
                                             quantiles=[0.1, 0.5, 0.9])
    with grpc.insecure_channel(pair[1]) as channel:
        resumed = list(forecast_pb2_grpc.ForecastStub(channel).Observe(iter([resumed_first, *messages[4:]]),
                                                                        timeout=60))
    before[-1].ClearField("resume_token")
    assert [m.SerializeToString() for m in before + resumed] == [m.SerializeToString() for m in whole]


def translate(target: str, request: translate_pb2.TranslateRequest) -> list[translate_pb2.TranslateUpdate]:
    with grpc.insecure_channel(target) as channel:
        return list(translate_pb2_grpc.TranslationStub(channel).Translate(request, timeout=60))


def test_translate_resumes_on_another_process_bit_for_bit(pair: tuple[str, str], data_dir: Path) -> None:
    text = next(source for source, _ in read_tsv(data_dir / "translation" / "pairs" / "libreoffice_help.test.tsv")
                if len(source.split()) > 12)
    uninterrupted = translate(pair[0], translate_pb2.TranslateRequest(model=ref("translation"), text=text))
    whole = [t for u in uninterrupted for t in u.tokens]
    assert len(whole) > 8
    with grpc.insecure_channel(pair[0]) as channel:
        responses = translate_pb2_grpc.TranslationStub(channel).Translate(
            translate_pb2.TranslateRequest(model=ref("translation"), text=text, resume_every=5), timeout=60)
        before, token = first_token(responses)
    sent = [t for u in before for t in u.tokens]
    assert len(sent) == 5
    resumed = translate(pair[1], translate_pb2.TranslateRequest(resume_token=token))
    *updates, last = resumed
    assert all(len(u.tokens) == 1 and not u.source_tokens for u in updates) and not last.tokens
    after = [t for u in updates for t in u.tokens]
    assert [t.SerializeToString() for t in sent + after] == [t.SerializeToString() for t in whole]
    assert last.text == uninterrupted[-1].text  # the whole translation, spans restored over every token


# Every way a token is refused.

def sign(state: resume_pb2.ResumeState, key_id: str, secret: bytes) -> bytes:
    body = state.SerializeToString()
    mac = hmac.new(secret, key_id.encode() + b"\0" + body, hashlib.sha256).digest()
    return resume_pb2.ResumeToken(key_id=key_id, body=body, mac=mac).SerializeToString()


@pytest.fixture(scope="module")
def good(pair: tuple[str, str]) -> bytes:
    """A genuine token of a greedy translation."""
    with grpc.insecure_channel(pair[1]) as channel:
        responses = translate_pb2_grpc.TranslationStub(channel).Translate(translate_pb2.TranslateRequest(
            model=ref("translation"), text="Select the cells that you want to copy.", resume_every=1), timeout=60)
        return first_token(responses)[1]


def refusal(target: str, token: bytes, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        translate(target, translate_pb2.TranslateRequest(resume_token=token, **fields))
    return raised.value


def resigned(good: bytes, keys: Path, **changes) -> bytes:
    """``good`` with ``changes`` to its state, signed again with the current key (as only the server could)."""
    token = resume_pb2.ResumeToken.FromString(good)
    state = resume_pb2.ResumeState.FromString(token.body)
    for name, value in changes.items():
        setattr(state, name, value)
    return sign(state, token.key_id, read_keys(str(keys))[token.key_id])


@pytest.mark.parametrize("case, code, words", [
    ("unknown key", grpc.StatusCode.INVALID_ARGUMENT, "signed with key 'k9', which this server does not have"),
    ("wrong secret", grpc.StatusCode.INVALID_ARGUMENT, "MAC does not match"),
    ("tampered", grpc.StatusCode.INVALID_ARGUMENT, "MAC does not match"),
    ("oversized", grpc.StatusCode.INVALID_ARGUMENT, "more than max_resume_token_bytes (65536)"),
    ("garbage", grpc.StatusCode.INVALID_ARGUMENT, "not a resume token"),
    ("expired", grpc.StatusCode.FAILED_PRECONDITION, "expired"),
    ("other version", grpc.StatusCode.FAILED_PRECONDITION, "translation version 7 is not served here"),
    ("other manifest", grpc.StatusCode.FAILED_PRECONDITION, "here has another manifest"),
])
def test_a_bad_token_is_refused_naming_the_reason(pair: tuple[str, str], good: bytes, keys: Path, case: str,
                                                  code: grpc.StatusCode, words: str) -> None:
    token = resume_pb2.ResumeToken.FromString(good)
    bad = {
        "unknown key": lambda: sign(resume_pb2.ResumeState.FromString(token.body), "k9", secrets.token_bytes(32)),
        "wrong secret": lambda: sign(resume_pb2.ResumeState.FromString(token.body), token.key_id,
                                     secrets.token_bytes(32)),
        "tampered": lambda: resume_pb2.ResumeToken(key_id=token.key_id, body=token.body[:-1] + bytes(
            [token.body[-1] ^ 1]), mac=token.mac).SerializeToString(),
        "oversized": lambda: good + b"\0" * 65536,
        "garbage": lambda: b"\xff\xfe not a token",
        "expired": lambda: resigned(good, keys, expires=time.time() - 5),
        "other version": lambda: resigned(good, keys, version=7),
        "other manifest": lambda: resigned(good, keys, manifest_sha256="0" * 64),
    }[case]()
    error = refusal(pair[1], bad)
    assert error.code() == code and error.details().startswith("resume_token: ") and words in error.details()


def test_a_token_resumes_only_its_own_task_and_model(pair: tuple[str, str], good: bytes) -> None:
    error = refusal(pair[1], good, model=ref("sentiment"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "model.name: 'sentiment' is not the model" in \
        error.details()
    with pytest.raises(grpc.RpcError) as raised:
        sentiment_run(pair[1], [sentiment_pb2.SentimentChunk(resume_token=good, text="more")])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a token of a translation stream, this method continues sentiment streams" in raised.value.details()
    error = refusal(pair[1], good, options=translate_pb2.DecodeOptions(beam=4))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "only greedy translations" in error.details()


def test_without_keys_tokens_are_off_with_failed_precondition(good: bytes) -> None:
    server = Running(CONFIG)
    try:
        error = refusal(server.target, good)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "resume tokens are off" in error.details()
        with pytest.raises(grpc.RpcError) as raised:
            translate(server.target, translate_pb2.TranslateRequest(model=ref("translation"), text="Open the file.",
                                                                    resume_every=3))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert raised.value.details().startswith("resume_every: resume tokens are off")
    finally:
        server.stop()


@pytest.mark.parametrize("line, words", [
    ("k1", "expected '<key id> <hex secret>'"), ("k1 xyz", "is not hexadecimal"),
    ("k1 00ff", "has 2 bytes, at least 32"), (f"k1 {'ab' * 32}\nk1 {'cd' * 32}", "appears twice"),
    ("# only a comment", "no key in it"),
])
def test_a_bad_keys_file_stops_the_server_naming_the_line(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "keys"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match="resume_keys_file") as raised:
        read_keys(str(path))
    assert words in str(raised.value)


def test_the_max_age_ending_freezes_a_stream_into_a_token(keys: Path, data_dir: Path) -> None:
    """A stream ended for age gets a token as its last message, then DEADLINE_EXCEEDED; it resumes elsewhere."""
    server = Running(Config(**{**CONFIG.__dict__, "resume_keys_file": str(keys), "max_stream_age_s": 1.0}))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = forecast_pb2_grpc.ForecastStub(channel)
            history = load_panel(data_dir / "forecast" / "aus_retail.csv").values[0][-60:].tolist()
            first = forecast_pb2.Observation(model=ref("forecast"), values=history, horizon=3)
            seen = []

            def slow() -> Iterator[forecast_pb2.Observation]:
                yield first
                time.sleep(3)  # the server ends the stream meanwhile

            with pytest.raises(grpc.RpcError) as raised:
                for update in stub.Observe(slow(), timeout=30):
                    seen.append(update)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(seen) == 2 and seen[-1].resume_token and not seen[-1].steps and seen[-1].observed == 60
    finally:
        server.stop()
    assert np.isfinite(seen[0].steps[0].point)


def test_the_client_resumes_a_stream_whose_server_drains_mid_way(pair: tuple[str, str], keys: Path,
                                                                  texts: list[str]) -> None:
    """A SIGTERM'd server freezes the stream at its grace period's end; the client resumes it on the other server
    (pick_first over two addresses moves on once the first is gone) and its caller sees one stream, equal to an
    uninterrupted run bit for bit."""
    parts = chunks_of(next(t for t in texts if len(t) > 150))
    with Client(pair[1], timeout=60) as solo:
        whole = list(solo.stream_sentiment(parts))
    draining = Process("--resume-keys-file", str(keys), "--grace-s", "0.3", "--drain-s", "0")
    terminated = threading.Event()

    def chunks() -> Iterator[str]:
        for index, part in enumerate(parts):
            if index == len(parts) // 2:
                terminated.wait(30)
                time.sleep(1.5)  # past the drain, the grace period and the freeze
            yield part

    try:
        resumed = []
        with Client(f"ipv4:{draining.target},{pair[1]}", timeout=60) as client:
            for update in client.stream_sentiment(chunks()):
                resumed.append(update)
                if len(resumed) == 1:  # the stream runs on the first server: stop it
                    draining.terminate()
                    terminated.set()
            assert len(client.retry.resumes) == 1
        assert draining.wait(30) == 0
    finally:
        draining.kill()
    assert any("frozen into a resume token at shutdown" in line for line in draining.lines)
    assert [m.SerializeToString() for m in resumed] == [m.SerializeToString() for m in whole]


def test_the_client_resumes_an_observe_stream_whose_server_drains_mid_way(pair: tuple[str, str], keys: Path,
                                                                          data_dir: Path) -> None:
    """As for StreamSentiment: the resumed call's first message is the first observation not yet answered, with the
    token and the first message's quantiles; the caller's updates equal an uninterrupted run bit for bit."""
    series = load_panel(data_dir / "forecast" / "aus_retail.csv").values[9]
    history, later = series[:-10].tolist(), series[-10:].tolist()
    messages = [forecast_pb2.Observation(model=ref("forecast"), values=history, start_month=5, horizon=4,
                                         quantiles=[0.1, 0.9])]
    messages += [forecast_pb2.Observation(values=later[i : i + 2], horizon=4) for i in range(0, 10, 2)]
    with Client(pair[1], timeout=60) as solo:
        whole = list(solo.observe(messages))
    draining = Process("--resume-keys-file", str(keys), "--grace-s", "0.3", "--drain-s", "0")
    terminated = threading.Event()

    def observations() -> Iterator[forecast_pb2.Observation]:
        for index, message in enumerate(messages):
            if index == 3:
                terminated.wait(30)
                time.sleep(1.5)  # past the drain, the grace period and the freeze
            yield message

    try:
        resumed = []
        with Client(f"ipv4:{draining.target},{pair[1]}", timeout=60) as client:
            for update in client.observe(observations()):
                resumed.append(update)
                if len(resumed) == 1:
                    draining.terminate()
                    terminated.set()
            assert len(client.retry.resumes) == 1
        assert draining.wait(30) == 0
    finally:
        draining.kill()
    assert [m.SerializeToString() for m in resumed] == [m.SerializeToString() for m in whole]
