"""The translation tokenizer, ``contract.subword.Subwords``, on the shipped ``spm.model``.

The expected ids were produced by the plain-Python BPE that ``Subwords`` replaced (it equalled
sentencepiece on all 83,562 corpus sentences; ``docs/translation.md``). Where the two differed,
on control and zero-width characters, the expectations are sentencepiece's ``nmt_nfkc``: what the
model was trained on.
"""

import json
import unicodedata
from pathlib import Path

import pytest

from contract.subword import Subwords
from training.translation_data import SOURCES_V1

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "translation" / "1"

KNOWN = {
    "The file could not be opened.": [102, 546, 1283, 279, 86, 3549, 3836],
    "Click the Save button to save the document.": [763, 15, 3671, 951, 53, 2361, 15, 317, 3836],
    "Die Datei konnte nicht geöffnet werden.": [147, 750, 1977, 175, 1756, 192, 3836],
    "Müßiggang ist aller Laster Anfang.": [101, 3850, 3885, 68, 2826, 134, 2427, 92, 1582, 2168, 3836],
    "Are you coming to dinner tonight?": [2359, 139, 293, 60, 53, 8, 6, 847, 7, 14, 416, 3882],
    "\ufb01le ＳＡＶＥ １２３": [546, 20, 3849, 3876, 3851, 2644, 3887],  # NFKC: ligature, full width
    "snow ☃ man 日本": [2987, 151, 3820, 1, 588, 3820, 1],  # unknown characters, adjacent ones as one <unk>
    "  Leading,   inner\tand trailing space  ": [424, 1807, 3846, 2218, 127, 1358, 99, 60, 2397],
}


@pytest.fixture(scope="module")
def subwords() -> Subwords:
    return Subwords(MODEL_DIR / "spm.model")


def test_manifest_names_the_model(subwords: Subwords) -> None:
    pre = json.loads((MODEL_DIR / "manifest.json").read_text())["preprocessing"]
    assert pre["subwords"] == "spm.model"
    assert subwords.unk_id == pre["unk_id"] == 1
    assert len(subwords) == 4000


def test_known_ids(subwords: Subwords) -> None:
    for text, ids in KNOWN.items():
        assert subwords.encode(text) == ids, text


def test_pieces(subwords: Subwords) -> None:
    assert [subwords.piece(i) for i in range(5)] == ["<pad>", "<unk>", "<s>", "</s>", "en"]
    assert [subwords.piece(i) for i in KNOWN["Are you coming to dinner tonight?"]] == [
        " Are", " you", " com", "ing", " to", " d", "in", "ner", " t", "on", "ight", "?"]
    assert subwords.piece(3820) == " "  # the bare word-start marker


def test_decode(subwords: Subwords) -> None:
    assert subwords.decode(KNOWN["The file could not be opened."]) == "The file could not be opened."
    assert subwords.decode([2, 15, 1, 3, 0]) == "the \u2047 "  # control ids dropped, <unk> reads " ⁇ "
    assert subwords.decode([1, 15]) == " \u2047  the"
    assert subwords.decode([]) == ""


def test_round_trip_on_the_test_splits(subwords: Subwords, data_dir: Path) -> None:
    """decode(encode(x)) is x after NFKC and whitespace collapsing, for every test-split sentence of both languages
    but the four that start with an arrow never seen in training (🡄, 🡆), which reads `` ⁇ ``."""
    paths = sorted(data_dir / "translation" / "pairs" / f"{source}.test.tsv" for source in SOURCES_V1)
    texts = [text for path in paths
             for line in path.read_text(encoding="utf-8").splitlines() for text in line.split("\t")]
    assert len(texts) == 2 * 2089
    unknown = 0
    for text in texts:
        ids = subwords.encode(text)
        expected = " ".join(unicodedata.normalize("NFKC", text).split())
        if subwords.unk_id in ids:
            unknown += 1
            expected = " \u2047 " + expected[1:]  # the unknown first character
        assert subwords.decode(ids) == expected, text
    assert unknown == 4


def test_whitespace_and_control_characters(subwords: Subwords) -> None:
    for text in ("", " ", "\t", "\r\n", " \t \r\n ", "\u200b", "\x07", "\ufeff"):
        assert subwords.encode(text) == [], repr(text)
    hello = subwords.encode("Hello world.")
    for text in ("Hello\tworld.", "Hello\r\nworld.", "  Hello   world.  ", "Hello\x07 world.", "Hello \x1b\x7fworld.",
                 "Hello\u200bworld.", "\ufeffHello world."):
        assert subwords.encode(text) == hello, repr(text)  # nmt_nfkc: controls removed, zero-width as space
    assert subwords.encode("Hello\x07world.") == subwords.encode("Helloworld.")
    assert subwords.encode("a\x00b") == [9, subwords.unk_id, 3838]
    for code in range(0x20):
        ids = subwords.encode(f"a{chr(code)}b")
        assert all(0 <= i < len(subwords) for i in ids)


def test_shipped_model_is_the_training_runs(data_dir: Path, tmp_path: Path) -> None:
    """Training the subword model again on the frozen training split, as ``python -m training translation``
    does, gives the shipped pieces, scores, types and normalizer."""
    from sentencepiece import sentencepiece_model_pb2

    from training.translation_data import load_corpus, train_sentencepiece

    corpus, _ = load_corpus(data_dir, sources=SOURCES_V1)
    texts = [text for splits in corpus.values() for pair in splits["train"] for text in pair]
    fresh, shipped = sentencepiece_model_pb2.ModelProto(), sentencepiece_model_pb2.ModelProto()
    fresh.ParseFromString(train_sentencepiece(texts, tmp_path / "spm", vocab_size=4000).read_bytes())
    shipped.ParseFromString((MODEL_DIR / "spm.model").read_bytes())
    assert len(shipped.pieces) == 4000
    assert fresh.pieces == shipped.pieces
    assert fresh.normalizer_spec == shipped.normalizer_spec
    assert shipped.normalizer_spec.name == "nmt_nfkc"
