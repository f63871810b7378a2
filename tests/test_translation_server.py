"""Paragraphs and copied spans through the real server (``Translate`` and ``TranslateBatch``)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import CONFIG, MODELS, newest_translation

from client import Client
from contract.segments import find_spans, split_sentences
from evaluate.translation import translation_greedy, translation_sources

pytestmark = pytest.mark.skipif(not (MODELS / "translation").is_dir(), reason="models/translation is not shipped")

SERVER_CONFIG = replace(CONFIG, max_text_chars=8000)  # room for an 800-word text
SENTENCES = ["Select the cells that you want to copy.", "Choose Edit - Copy.", "The dialog shows the properties."]
PARAGRAPH = f"{SENTENCES[0]} {SENTENCES[1]}\n{SENTENCES[2]}"


def test_a_paragraph_is_translated_sentence_by_sentence_in_order(client: Client) -> None:
    """Each sentence's tokens equal the reference runtime's for that sentence alone, in order; the attention of
    each token covers its own sentence's source ids among all of them; the text keeps the line break."""
    model = newest_translation()  # what a request without a version gets
    sources = translation_sources(model, SENTENCES)
    expected = translation_greedy(model, sources)
    updates = list(client.translate(PARAGRAPH, max_tokens_per_message=3))
    tokens = [t for u in updates for t in u.tokens]
    assert [t.token_id for t in tokens] == [i for ids in expected for i in ids]
    assert len(updates[0].source_tokens) == sum(map(len, sources))
    starts = np.cumsum([0, *map(len, sources)])
    owners = [k for k, ids in enumerate(expected) for _ in ids]
    for token, k in zip(tokens, owners, strict=True):
        attention = np.array(token.attention)
        assert math.isclose(attention[starts[k] : starts[k + 1]].sum(), 1.0, rel_tol=1e-4)
        assert attention.sum() == pytest.approx(1.0, rel=1e-4)
    text = updates[-1].text
    assert text.count("\n") == 1
    batch = client.translate_batch([PARAGRAPH, SENTENCES[1]])
    assert [t.text for t in batch.translations] == [text, client.translate_batch([SENTENCES[1]]).translations[0].text]
    assert list(batch.translations[0].token_ids) == [t.token_id for t in tokens]
    assert text.split("\n")[0].endswith(batch.translations[1].text)


def test_filled_messages_carry_the_same_tokens_fuller(client: Client) -> None:
    """``fill_messages``: the first token alone, then ``max_tokens_per_message`` to a message until each sentence's
    last ones (a sentence's end sends what is held); the same tokens and text as without it."""
    sentence = "Select the cells that you want to copy to another sheet of the document."
    plain = list(client.translate(sentence, max_tokens_per_message=4))
    filled = list(client.translate(sentence, max_tokens_per_message=4, fill_messages=True))
    tokens = [t.token_id for u in filled for t in u.tokens]
    assert tokens == [t.token_id for u in plain for t in u.tokens] and len(tokens) > 9
    counts = [len(u.tokens) for u in filled]
    assert counts[0] == 1 and counts[-1] == 0  # the first token at once; the closing update has the text
    assert all(c == 4 for c in counts[1:-2]) and 1 <= counts[-2] <= 4
    assert filled[-1].text == plain[-1].text
    # Several sentences, each decoded in its own row: the same tokens in order.
    assert [t.token_id for u in client.translate(PARAGRAPH, max_tokens_per_message=4, fill_messages=True)
            for t in u.tokens] == [t.token_id for u in client.translate(PARAGRAPH) for t in u.tokens]


def test_an_800_word_text_is_not_cut(client: Client, data_dir: Path) -> None:
    """About 800 words of real help sentences: every sentence is translated (no cut at 120 source pieces)."""
    from training.translation_data import read_tsv

    pairs = read_tsv(data_dir / "translation" / "pairs" / "libreoffice_help.test.tsv")
    chosen, words = [], 0
    for source, _ in pairs:
        if words >= 800:
            break
        chosen.append(source)
        words += len(source.split())
    text = " ".join(chosen)
    [translated] = client.translate_batch([text]).translations
    model = newest_translation()  # what a request without a version gets
    sentences = [sentence for sentence, _ in split_sentences(text)]
    assert len(sentences) > 40 and sum(map(len, translation_sources(model, sentences))) > 1000
    expected = translation_greedy(model, translation_sources(model, sentences))
    assert list(translated.token_ids) == [i for ids in expected for i in ids]


def test_numbers_urls_and_paths_are_copied(client: Client) -> None:
    texts = ["In 2023, 1,234 people paid $56.78 each.", "Pi is 3.14159.",
             "Open https://www.example.com/path?q=1&x=2 in the browser.",
             "Edit /etc/fstab and write to a.b@example.org."]
    for text, translated in zip(texts, client.translate_batch(texts).translations, strict=True):
        assert all(span.text in translated.text for span in find_spans(text)), translated.text
    beam = client.translate_batch(texts, beam=4).translations
    assert all(span.text in t.text for text, t in zip(texts, beam, strict=True) for span in find_spans(text))


def test_a_sentence_over_the_model_limit_is_refused_naming_the_field_and_the_limit(client: Client) -> None:
    long = " ".join(["Word"] * 130) + "."
    with pytest.raises(grpc.RpcError) as error:
        list(client.translate(f"Fine. {long}"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text: sentence 2" in error.value.details() and "the model's limit is 119" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        client.translate_batch(["Fine.", long])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "texts[1]: sentence 1" in error.value.details()
