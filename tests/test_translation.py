"""Translation: attention, the step function, decoding, overfitting, and the extractors on real files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from training import translation
from training.seq2seq import Seq2Seq, Seq2SeqConfig, beam_search, greedy_decode, smoothed_nll
from training.translation_data import (
    BOS_ID,
    DING_FILE,
    EOS_ID,
    HELP_DIR,
    MO_DIR,
    PAD_ID,
    UNK_ID,
    extract_ding,
    extract_gettext,
    extract_help,
    html_paragraphs,
    load_corpus,
    load_sentencepiece,
    read_tsv,
    train_sentencepiece,
    write_tsv,
)

DATA = Path(__file__).resolve().parents[1] / "data"
TRANSLATION = DATA / "translation"
needs_data = pytest.mark.skipif(not (TRANSLATION / DING_FILE).exists(), reason="run `make data` first")


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def padded_batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (len(lengths), max(lengths)), generator=generator)
    lengths_t = torch.tensor(lengths)
    src[torch.arange(max(lengths)).unsqueeze(0) >= lengths_t.unsqueeze(1)] = PAD_ID
    return src, lengths_t


def tiny_model(attention: str = "bahdanau", vocab: int = 40) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig(vocab, emb=12, hidden=16, attention=attention, attention_dim=10, dropout=0.0)).eval()


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_attention_sums_to_one_and_is_zero_on_padding(attention: str) -> None:
    model = tiny_model(attention)
    src, lengths = padded_batch(40, [7, 3, 5, 1])
    encoder_outputs, keys, mask, state = model.encode(src, lengths)
    assert encoder_outputs.shape == (4, 7, 32) and mask.shape == (4, 7) and state.shape == (4, 16)
    assert keys.shape == (4, 7, 10 if attention == "bahdanau" else 16)
    prev = torch.full((4,), BOS_ID)
    for _ in range(3):
        log_probs, state, attention_weights = model.step(prev, state, encoder_outputs, keys, mask)
        torch.testing.assert_close(attention_weights.sum(-1), torch.ones(4))
        assert torch.all(attention_weights[~mask] == 0)
        assert torch.all(attention_weights[mask] > 0)
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(4))
        prev = log_probs.argmax(-1)


def test_padding_does_not_change_a_sentence() -> None:
    """A sentence decodes the same alone and inside a padded batch (both encoder directions)."""
    model = tiny_model()
    src, lengths = padded_batch(40, [8, 4, 6])
    tgt_in = torch.randint(4, 40, (3, 5), generator=torch.Generator().manual_seed(1))
    batched = model(src, lengths, tgt_in)
    for i, length in enumerate(lengths.tolist()):
        alone = model(src[i : i + 1, :length], lengths[i : i + 1], tgt_in[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone)


def test_step_function_and_full_pass_agree() -> None:
    model = tiny_model()
    src, lengths = padded_batch(40, [6, 2, 5])
    tgt_in = torch.randint(4, 40, (3, 7), generator=torch.Generator().manual_seed(2))
    full = model(src, lengths, tgt_in)
    encoder_outputs, keys, mask, state = model.encode(src, lengths)
    for t in range(tgt_in.shape[1]):
        log_probs, state, _ = model.step(tgt_in[:, t], state, encoder_outputs, keys, mask)
        torch.testing.assert_close(full[:, t], log_probs)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_beam_one_equals_greedy(attention: str) -> None:
    model = tiny_model(attention)
    src, lengths = padded_batch(40, [9, 3, 5, 1, 7, 2], seed=3)
    greedy_tokens, greedy_attn = greedy_decode(model, src, lengths, max_len=25)
    beam_tokens, beam_attn = beam_search(model, src, lengths, beam=1, length_penalty=1.0, max_len=25)
    assert greedy_tokens == beam_tokens
    for a, b in zip(greedy_attn, beam_attn, strict=True):
        torch.testing.assert_close(a, b)


def test_beam_search_scores_at_least_greedy_hypotheses() -> None:
    """Without a length penalty, the beam's best has a log-probability ≥ the greedy output's."""
    model = tiny_model()
    src, lengths = padded_batch(40, [6, 4, 8], seed=4)

    def log_prob(tokens: list[list[int]]) -> torch.Tensor:
        tgt = translation.pad([[BOS_ID, *t, EOS_ID] for t in tokens])
        scores = model(src, lengths, tgt[:, :-1]).gather(-1, tgt[:, 1:].unsqueeze(-1)).squeeze(-1)
        return (scores * (tgt[:, 1:] != PAD_ID)).sum(-1)

    greedy_tokens, _ = greedy_decode(model, src, lengths, max_len=30)
    beam_tokens, _ = beam_search(model, src, lengths, beam=4, length_penalty=0.0, max_len=30)
    assert torch.all(log_prob(beam_tokens) >= log_prob(greedy_tokens) - 1e-4)


@needs_data
def test_ding_extractor_on_the_real_file() -> None:
    extraction = extract_ding(TRANSLATION / DING_FILE)
    counts = extraction.counts
    assert 15_000 <= counts["kept"] == len(extraction.pairs) <= 25_000
    assert counts["removed_not_sentence_end"] > 100_000  # headwords, not sentences
    assert ("There is no guarantee of success.", "Es gibt keine Erfolgsgarantie.") in extraction.pairs
    for en, de in extraction.pairs:
        assert en[0].isupper() and "{" not in de and "sth." not in en and "\t" not in en + de


@needs_data
def test_help_extractor_aligns_paragraph_ids() -> None:
    page = TRANSLATION / HELP_DIR / "{}" / "text/shared/main0213.html"
    en, de = (html_paragraphs(Path(str(page).format(lang))) for lang in ("en-US", "de"))
    ident = next(k for k, v in en.items() if v.strip() == "Allows you to undo a data entry.")
    assert de[ident].strip() == "Macht eine Dateneingabe rückgängig."
    extraction = extract_help(TRANSLATION / HELP_DIR, limit_files=150)
    assert extraction.counts["files"] == 150 and len(extraction.pairs) > 300
    assert all(3 <= len(en.split()) <= 30 and en[-1] in ".?!\"')" for en, _ in extraction.pairs)


@needs_data
def test_gettext_extractor_drops_format_strings_and_markup() -> None:
    extraction = extract_gettext(TRANSLATION / MO_DIR)
    assert extraction.counts["catalogues"] > 10 and len(extraction.pairs) > 3000
    printf_or_markup = re.compile(r"%(\d+|[sdu])\b|\{\w*\}|</?\w|&\w+;|~\w|\n")
    for en, de in extraction.pairs:
        assert not printf_or_markup.search(en + de), (en, de)


def test_tsv_corpus_splits_are_frozen_on_disk(tmp_path: Path) -> None:
    pairs = [(f"source sentence {i} .", f"Zielsatz {i} .") for i in range(200)]
    write_tsv(tmp_path / "xx-yy.tsv", pairs)
    corpus, _ = load_corpus(tmp_path, [tmp_path / "xx-yy.tsv"], seed=1)
    splits = corpus["xx-yy"]
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [180, 10, 10]
    assert sorted(p for part in splits.values() for p in part) == sorted(pairs)
    # The test split is read back from disk, even if the source file changes afterwards.
    write_tsv(tmp_path / "xx-yy.tsv", pairs[:50])
    again, _ = load_corpus(tmp_path, [tmp_path / "xx-yy.tsv"], seed=1)
    assert again["xx-yy"]["test"] == splits["test"] == read_tsv(tmp_path / "splits" / "xx-yy.test.tsv")
    (tmp_path / "bad.tsv").write_text("only one field\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:1"):
        read_tsv(tmp_path / "bad.tsv")


def test_sentencepiece_special_ids(tmp_path: Path) -> None:
    texts = [f"the quick brown fox {i} jumps over der faule Hund" for i in range(50)]
    sp = load_sentencepiece(train_sentencepiece(texts, tmp_path / "spm", vocab_size=60))
    assert [sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]
    assert sp.decode(sp.encode("the quick fox")) == "the quick fox"


@needs_data
def test_tiny_model_overfits_64_real_pairs(tmp_path: Path) -> None:
    pairs = short_ding_pairs()[:64]
    sp_path = train_sentencepiece([t for p in pairs for t in p], tmp_path / "spm", vocab_size=300)
    encoder = translation.Encoder(sp_path)
    batch = translation.collate([(encoder.source(s), encoder.target(t)) for s, t in pairs])
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(encoder.sp.get_piece_size(), emb=64, hidden=96, attention_dim=64, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    src, lengths, tgt_in, tgt_out = batch
    for _ in range(150):
        loss = smoothed_nll(model(src, lengths, tgt_in), tgt_out, smoothing=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hyps, _, _ = translation.translate(model, encoder, [s for s, _ in pairs], 1, 1.0, 60)
    assert translation.score(hyps, [t for _, t in pairs])["bleu"] > 90


def short_ding_pairs() -> list[tuple[str, str]]:
    """Short Ding pairs, extracted from the real dictionary file."""
    pairs = extract_ding(TRANSLATION / DING_FILE).pairs
    return [p for p in pairs if len(p[0].split()) <= 8]


@needs_data
def test_cli_runs_and_resumes_with_tiny_settings(tmp_path: Path) -> None:
    tiny = ["--data-dir", str(DATA), "--out", str(tmp_path / "run"), "--vocab-size", "300", "--emb", "16"]
    tiny += ["--hidden", "16", "--attention-dim", "16", "--max-train-pairs", "100", "--valid-size", "8"]
    tiny += ["--max-test-pairs", "8", "--beam", "3", "--heatmaps", "1", "--average", "2"]
    translation.main([*tiny, "--epochs", "1"])
    translation.main([*tiny, "--epochs", "2", "--resume"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]["valid_bleu"]) == 2
    for source in ("ding", "libreoffice_help", "gettext"):
        assert set(metrics["test"][source]) == {"pairs", "greedy", "beam3"}
        assert (tmp_path / "run" / f"attention_{source}_0.png").exists()
    assert metrics["tokenizer"]["eos_id"] == EOS_ID
    assert (tmp_path / "run" / "spm.model").exists() and (tmp_path / "run" / "last.pt").exists()


class _Encode(torch.nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.encode(src_ids, src_lengths)


class _Step(torch.nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, prev: torch.Tensor, state: torch.Tensor, outputs: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return self.model.step(prev, state, outputs, keys, mask)


def test_encoder_and_step_export_to_onnx_with_dynamic_shapes(tmp_path: Path) -> None:
    """The two functions export as they are; ONNX Runtime matches torch on other batch/length sizes."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = tiny_model()
    src, lengths = padded_batch(40, [7, 4, 2])
    encoded = model.encode(src, lengths)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    torch.onnx.export(
        _Encode(model).eval(),
        (src, lengths),
        tmp_path / "encoder.onnx",
        input_names=["src_ids", "src_lengths"],
        output_names=["encoder_outputs", "keys", "mask", "state"],
        dynamic_shapes=({0: batch, 1: length}, {0: batch}),
        dynamo=True,
    )
    prev = torch.full((3,), BOS_ID)
    torch.onnx.export(
        _Step(model).eval(),
        (prev, encoded[3], encoded[0], encoded[1], encoded[2]),
        tmp_path / "step.onnx",
        input_names=["prev_tokens", "state", "encoder_outputs", "keys", "mask"],
        output_names=["log_probs", "new_state", "attention"],
        dynamic_shapes=({0: batch}, {0: batch}, {0: batch, 1: length}, {0: batch, 1: length}, {0: batch, 1: length}),
        dynamo=True,
    )
    src, lengths = padded_batch(40, [9, 5], seed=7)
    encoder = ort.InferenceSession(str(tmp_path / "encoder.onnx"))
    outputs, keys, mask, state = encoder.run(None, {"src_ids": src.numpy(), "src_lengths": lengths.numpy()})
    expected = model.encode(src, lengths)
    for got, want in zip((outputs, keys, mask, state), expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-4)
    step = ort.InferenceSession(str(tmp_path / "step.onnx"))
    feed = {"prev_tokens": torch.tensor([BOS_ID, 5]).numpy(), "state": state, "encoder_outputs": outputs}
    got_step = step.run(None, {**feed, "keys": keys, "mask": mask})
    want_step = model.step(torch.tensor([BOS_ID, 5]), expected[3], expected[0], expected[1], expected[2])
    for got, want in zip(got_step, want_step, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-4)
