"""The benchmark's inputs: real test-split texts, tokenized the way the server tokenizes them.

Every system (server, ONNX Runtime loop, PyTorch loop) gets the same ``N`` texts and the same
token ids, so their emitted-token counts are directly comparable.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from server.subword import SubwordBPE
from server.tokenizers import WordTokenizer

TRANSLATION_TEST = Path("data/translation/pairs/libreoffice_help.test.tsv")
SENTIMENT_CORPUS = Path("data/sentiment/rotten_tomatoes_corpus_full.csv.bz2")
MAX_DECODE_LEN = 200  # the server's default max_decode_len


@dataclass(frozen=True)
class Workload:
    task: str  # "translation" or "sentiment"
    model_dir: Path  # models/<name>/<version>
    texts: list[str]
    ids: list[list[int]]  # translation: source ids with EOS; sentiment: one id per emitted token
    bos: int = 0
    eos: int = 0
    max_length: int = MAX_DECODE_LEN  # translation: the cap on source and output tokens

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.model_dir / "manifest.json").read_text())

    def take(self, n: int) -> Workload:
        return replace(self, texts=self.texts[:n], ids=self.ids[:n])

    def limit(self, index: int) -> int:
        """Translation: the decode length limit of text ``index``, EOS included (as the server)."""
        return min(2 * len(self.ids[index]) + 10, self.max_length)


def newest_version(models: Path, name: str) -> Path | None:
    versions = sorted((int(p.name), p) for p in (models / name).glob("*") if p.name.isdigit())
    ready = [p for _, p in versions if (p / "manifest.json").is_file()]
    return ready[-1] if ready else None


def translation(model_dir: Path, count: int) -> Workload:
    """The first ``count`` English sentences of the LibreOffice-help test split, cut as the server cuts them."""
    pre = json.loads((model_dir / "manifest.json").read_text())["preprocessing"]
    max_length = min(pre.get("max_length", MAX_DECODE_LEN), MAX_DECODE_LEN)
    tokenizer = SubwordBPE(model_dir / pre["subwords"])
    lines = TRANSLATION_TEST.read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t")[0] for line in lines if line.strip()][:count]
    ids = [[*tokenizer.encode(t), *pre["source_suffix"]][:max_length] for t in texts]
    return Workload("translation", model_dir, texts, ids, pre["bos_id"], pre["eos_id"], max_length)


def sentiment(model_dir: Path, count: int) -> Workload:
    """The first ``count`` snippets of the sentiment test split; the server emits one update per token."""
    from training.sentiment_data import split_snippets  # reads the corpus only; no torch

    manifest = json.loads((model_dir / "manifest.json").read_text())
    tokenizer = WordTokenizer(model_dir, manifest["preprocessing"])
    texts = [t for t in split_snippets(SENTIMENT_CORPUS)["test"].texts if tokenizer.tokens(t)][:count]
    return Workload("sentiment", model_dir, texts, [tokenizer.ids(tokenizer.tokens(t)) for t in texts])


def checkpoint_of(workload: Workload, fallback: Path) -> Path:
    """The torch checkpoint the shipped graphs were exported from (``provenance.command``), else ``fallback``."""
    words = shlex.split(workload.manifest.get("provenance", {}).get("command", ""))
    if "--checkpoint" in words and words.index("--checkpoint") + 1 < len(words):
        path = Path(words[words.index("--checkpoint") + 1])
        if path.is_file():
            return path
    return fallback
