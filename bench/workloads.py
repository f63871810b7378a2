"""The benchmark's inputs: real test-split texts, tokenized the way the server tokenizes them.

Every system (server, ONNX Runtime loop, PyTorch loop) gets the same ``N`` texts and the same
token ids, so their emitted-token counts are directly comparable. Tokenizers and length limits
come from ``contract/``, read from the model's manifest.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from contract.manifest import Manifest, SentimentPreprocessing, TranslationPreprocessing
from contract.repository import read_manifest
from contract.subword import Subwords
from contract.translation import OutputLength
from contract.words import WordTokenizer
from server.config import Config

TRANSLATION_TEST = Path("data/translation/pairs/libreoffice_help.test.tsv")
SENTIMENT_CORPUS = Path("data/sentiment/rotten_tomatoes_corpus_full.csv.bz2")


@dataclass(frozen=True)
class Workload:
    task: str  # "translation" or "sentiment"
    model_dir: Path  # models/<name>/<version>
    texts: list[str]
    ids: list[list[int]]  # translation: source ids with EOS; sentiment: one id per emitted token
    bos: int = 0
    eos: int = 0
    output_length: OutputLength | None = None  # translation: the manifest's length rule
    max_length: int | None = None  # translation: the server's cap on output tokens (its max_decode_len)

    @property
    def manifest(self) -> Manifest:
        return read_manifest(self.model_dir)

    @property
    def stream_graph(self) -> str:
        """The graph a stream steps through, whose batches the server's metrics count."""
        pre = self.manifest.preprocessing
        return pre.stream_graph if isinstance(pre, SentimentPreprocessing) else "decoder_step"

    def take(self, n: int) -> Workload:
        return replace(self, texts=self.texts[:n], ids=self.ids[:n])

    def limit(self, index: int) -> int:
        """Translation: the output limit of text ``index``, EOS included (as the server)."""
        assert self.output_length is not None, "only translation workloads have output limits"
        return self.output_length.limit(len(self.ids[index]), self.max_length)


def newest_version(models: Path, name: str) -> Path | None:
    versions = sorted((int(p.name), p) for p in (models / name).glob("*") if p.name.isdigit())
    ready = [p for _, p in versions if (p / "manifest.json").is_file()]
    return ready[-1] if ready else None


def translation(model_dir: Path, count: int) -> Workload:
    """The first ``count`` English sentences of the LibreOffice-help test split, cut as the server cuts them."""
    pre = read_manifest(model_dir).preprocessing
    assert isinstance(pre, TranslationPreprocessing), f"{model_dir} is not a translation model"
    tokenizer = Subwords(model_dir / pre.subwords)
    lines = TRANSLATION_TEST.read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t")[0] for line in lines if line.strip()][:count]
    ids = [pre.output_length.source(tokenizer.encode(text), pre.source_suffix) for text in texts]
    cap = min(pre.max_length, Config().max_decode_len)  # a request without max_length gets this cap
    return Workload("translation", model_dir, texts, ids, pre.bos_id, pre.eos_id, pre.output_length, cap)


def sentiment(model_dir: Path, count: int) -> Workload:
    """The first ``count`` snippets of the sentiment test split; the server emits one update per token."""
    from training.sentiment_data import split_snippets  # reads the corpus only; no torch

    pre = read_manifest(model_dir).preprocessing
    assert isinstance(pre, SentimentPreprocessing), f"{model_dir} is not a sentiment model"
    tokenizer = WordTokenizer(model_dir / pre.vocabulary, pre.unk_id, pre.lowercase)
    texts = [t for t in split_snippets(SENTIMENT_CORPUS)["test"].texts if tokenizer.tokens(t)][:count]
    return Workload("sentiment", model_dir, texts, [tokenizer.ids(tokenizer.tokens(t)) for t in texts])


def checkpoint_of(workload: Workload, fallback: Path) -> Path:
    """The torch checkpoint the shipped graphs were exported from (``provenance.command``), else ``fallback``."""
    words = shlex.split(workload.manifest.raw.get("provenance", {}).get("command", ""))
    if "--checkpoint" in words and words.index("--checkpoint") + 1 < len(words):
        path = Path(words[words.index("--checkpoint") + 1])
        if path.is_file():
            return path
    return fallback
