"""Review-length texts against a real server: ``Classify`` reads the whole text as ``StreamSentiment`` does, up to
the manifest's ``max_tokens``; a text or message over its limit gets a clear error and the server keeps serving."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from servers import CONFIG, MODELS

from client import Client
from contract.repository import load_model
from evaluate import sentiment_probs
from training.sentiment_data import review, split_snippets

pytestmark = pytest.mark.skipif(not (MODELS / "sentiment").is_dir(), reason=f"needs the sentiment model in {MODELS}")

SERVER_CONFIG = replace(CONFIG, max_text_chars=50_000, max_message_bytes=300_000)


@pytest.fixture(scope="module")
def whole_review(data_dir: Path) -> str:
    """A test-split text of 400 snippets (about 47,000 characters, 9,000 tokens), cut at a space within 50,000."""
    test = split_snippets(data_dir / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2")["test"]
    return review(test, SERVER_CONFIG.max_text_chars)


def test_classify_reads_a_whole_review_as_the_stream_does(client: Client, whole_review: str) -> None:
    result = client.classify([whole_review]).results[0]
    model = load_model(MODELS / "sentiment" / str(client.get_model("sentiment").version))
    assert result.tokens > 8_000  # far past the 64 tokens that Classify read before
    assert result.probabilities == pytest.approx(sentiment_probs(model, [whole_review])[0].tolist(), abs=1e-5)
    chunks = [whole_review[start : start + 4096] for start in range(0, len(whole_review), 4096)]
    updates = list(client.stream_sentiment(chunks))
    assert len(updates) == result.tokens
    assert math.isclose(updates[-1].positive, result.probabilities[-1], abs_tol=1e-5)


def test_a_text_over_the_models_max_tokens_is_refused(client: Client) -> None:
    limit = load_model(MODELS / "sentiment" / str(client.get_model("sentiment").version)
                       ).manifest.preprocessing.max_tokens
    assert client.classify(["!" * limit]).results[0].tokens == limit
    with pytest.raises(grpc.RpcError) as error:
        client.classify(["fine", "!" * (limit + 1)])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == f"texts[1] has {limit + 1} tokens, the limit is {limit} (the model's max_tokens)"


def test_a_message_over_max_message_bytes_is_refused_and_the_server_goes_on(client: Client) -> None:
    texts = ["good film " * 5_000] * 7  # 350,000 bytes, over the 300,000 of this server
    with pytest.raises(grpc.RpcError) as error:
        client.classify(texts)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "300000" in (error.value.details() or "")
    assert client.health() == "SERVING"
    assert len(client.classify(texts[:5]).results) == 5
