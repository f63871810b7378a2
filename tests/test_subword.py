"""The server's plain-Python BPE equals sentencepiece on real sentences, both ways."""

from pathlib import Path

import sentencepiece as spm

from export.subword import write_pieces
from server.subword import SubwordBPE
from training.translation_data import train_sentencepiece


def test_plain_python_bpe_matches_sentencepiece(data_dir: Path, tmp_path: Path) -> None:
    pairs = data_dir / "translation" / "pairs"
    train = [text for line in (pairs / "ding.train.tsv").read_text().splitlines()[:3000] for text in line.split("\t")]
    model_file = train_sentencepiece(train, tmp_path / "spm", vocab_size=800)
    reference = spm.SentencePieceProcessor(model_file=str(model_file))
    ours = SubwordBPE(write_pieces(model_file, tmp_path / "pieces.json"))
    texts = [text for name in ("ding", "libreoffice_help", "gettext")
             for line in (pairs / f"{name}.test.tsv").read_text().splitlines() for text in line.split("\t")]
    texts += ["  Leading,   inner\tand trailing space  ", "ﬁ ligature and ＦＵＬＬ width", "日本語 unknown ☃ chars", ""]
    assert len(texts) > 2000
    for text in texts:
        ids = reference.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == reference.decode(ids), text
