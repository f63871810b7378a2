"""The reference runtime (``evaluate/``): its decoders agree with each other and with PyTorch's.

Greedy = beam search of width 1 and the sentiment graphs' agreement run on the shipped models;
beam search against ``training/seq2seq.beam_search`` runs on a tiny exported model (as in
``test_export_translation.py``), since the shipped model's checkpoint is not in the repository.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export_translation import copy_task_model, padded, sources

from contract.repository import Model, load_model
from evaluate import (
    greedy_steps,
    sentiment_probs,
    sentiment_running,
    translation_beam,
    translation_greedy,
    translation_sources,
)
from training.seq2seq import Seq2Seq, Seq2SeqConfig, beam_search
from training.translation_data import load_sentencepiece, read_tsv, train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def shipped_translation() -> Model:
    return load_model(MODELS / "translation" / "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seq2Seq, Model]:
    """A tiny copy-task model, trained only so far that beam search and greedy decoding often differ,
    and its export (a fresh process, as ``make models`` runs it)."""
    run = tmp_path_factory.mktemp("beam") / "run"
    texts = [f"the quick brown fox {i} jumps over der faule Hund" for i in range(50)]
    vocab = load_sentencepiece(train_sentencepiece(texts, run / "spm", vocab_size=60)).get_piece_size()
    model = copy_task_model(Seq2SeqConfig(vocab, emb=12, hidden=16, attention_dim=10, dropout=0.0), steps=50)
    torch.save({"config": model.config.to_dict(), "model": model.state_dict()}, run / "model.pt")
    test = {"greedy": {"bleu": 1.0, "chrf": 2.0}, "beam5": {"bleu": 1.5, "chrf": 2.5}, "pairs": 3}
    (run / "metrics.json").write_text(json.dumps({"test": {"ding": test}, "args": {"max_len": "40"}}))
    subprocess.run([sys.executable, "-m", "export", "translation", "--checkpoint", str(run / "model.pt"),
                    "--out", str(run.parent / "models")], cwd=ROOT, check=True, capture_output=True)
    return model, load_model(run.parent / "models" / "translation" / "1")


def test_greedy_equals_beam_of_width_one(shipped_translation: Model, data_dir: Path) -> None:
    pairs = read_tsv(data_dir / "translation" / "pairs" / "libreoffice_help.test.tsv")[:6]
    src = translation_sources(shipped_translation, [source for source, _ in pairs])
    greedy = translation_greedy(shipped_translation, src)
    assert all(greedy) and greedy == [translation_beam(shipped_translation, s, width=1) for s in src]


def test_greedy_steps_report_every_token_once(shipped_translation: Model, data_dir: Path) -> None:
    """The bench's view of the loop: each row appears until its EOS, and the tokens are ``translation_greedy``'s."""
    pairs = read_tsv(data_dir / "translation" / "pairs" / "gettext.test.tsv")[:9]
    src = translation_sources(shipped_translation, [source for source, _ in pairs])
    eos = shipped_translation.manifest.preprocessing.eos_id
    tokens: list[list[int]] = [[] for _ in src]
    for step in greedy_steps(shipped_translation, src):
        assert len(step.rows) == len(step.tokens) == len(step.log_probs) == len(step.attention)
        np.testing.assert_allclose(step.attention.sum(-1), 1, atol=1e-5)
        for row, token in zip(step.rows.tolist(), step.tokens.tolist(), strict=True):
            assert not tokens[row] or tokens[row][-1] != eos
            tokens[row].append(token)
    assert all(row[-1] == eos for row in tokens)
    assert [row[:-1] for row in tokens] == translation_greedy(shipped_translation, src, batch_size=4)


def test_beam_search_matches_pytorch(tiny: tuple[Seq2Seq, Model]) -> None:
    torch_model, model = tiny
    pre = model.manifest.preprocessing
    src = sources(torch_model.config.vocab_size, count=3, seed=0)
    greedy, differ = translation_greedy(model, src), 0
    for width, penalty in ((3, 1.0), (5, 0.6)):
        for source, greedy_tokens in zip(src, greedy, strict=True):
            expected, _ = beam_search(torch_model, *padded([source]), beam=width, length_penalty=penalty,
                                      max_len=pre.max_length)
            assert translation_beam(model, source, width, penalty) == expected[0]
            differ += expected[0] != greedy_tokens
    assert differ, "the beams should find something other than the greedy path"


def test_sentiment_step_graph_ends_where_the_sequence_graph_does() -> None:
    model = load_model(MODELS / "sentiment" / "1")
    texts = ["A tedious, overlong mess that never finds its footing.", "great", "Warm, funny and wise: see it."]
    running = sentiment_running(model, texts)
    assert [len(r) for r in running] == [11, 1, 9]
    np.testing.assert_allclose(np.stack([r[-1] for r in running]), sentiment_probs(model, texts), atol=1e-5)


def test_sentiment_probs_read_whole_texts_up_to_max_tokens() -> None:
    model = load_model(MODELS / "sentiment" / "1")
    texts = [" ".join(["A tedious, overlong mess."] * 40), "Warm, funny and wise: see it. " * 30, "great"]
    running = sentiment_running(model, texts)
    assert [len(r) for r in running] == [240, 270, 1]  # past the 64 tokens that training read
    np.testing.assert_allclose(np.stack([r[-1] for r in running]), sentiment_probs(model, texts), atol=1e-5)
    first = sentiment_probs(model, texts, first=64)
    np.testing.assert_allclose(first[:2], np.stack([r[63] for r in running[:2]]), atol=1e-5)
    limit = model.manifest.preprocessing.max_tokens
    with pytest.raises(ValueError, match=f"a text has {limit + 1} tokens, more than max_tokens {limit}"):
        sentiment_probs(model, ["!" * (limit + 1)])
