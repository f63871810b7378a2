"""Sentence pairs for translation: extraction, filtering, dedup, frozen splits, TSV loading, subwords.

Three English→German sources ship inside Debian packages (``make data``):

- ``ding``: the Ding dictionary. Each line is ``de | de … :: en | en …``; the ``|``-separated
  alternatives are aligned, and the aligned ones that end in ``.?!`` on both sides are example
  sentences.
- ``libreoffice_help``: the same help pages in both languages; paragraphs (``<p>``, ``<h1-6>``,
  ``<td>``) carry the same ``id``, so pairing by file and id aligns them.
- ``gettext``: ``.mo`` catalogues of ``libreoffice-l10n-de``: ``msgid → msgstr``.

Every source goes through the same pipeline: extract → clean → filter (each filter's count is
recorded) → dedup → one TSV of pairs. Any other language pair plugs in at the TSV level: a file
with one ``source<TAB>target`` pair per line (see ``docs/translation.md``).

Splits are frozen on disk: ``<dir>/<name>.{train,valid,test}.tsv`` are written once,
deterministically from the pairs and the seed, and read back afterwards, so a test split never
changes once chosen (delete the files to re-split on purpose). The subword model is trained on
the training split only and is a plain sentencepiece file, usable without torch.
"""

from __future__ import annotations

import gettext
import html
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from training.common import split_indices

Pair = tuple[str, str]

SOURCES = ("ding", "libreoffice_help", "gettext", "gnome_help", "app_gettext")
SOURCES_V1 = SOURCES[:3]  # what translation version 1 was trained on (``--sources`` reproduces it)
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)
DING_FILE = "ding/usr/share/trans/de-en"
HELP_DIR = "libreoffice_help/usr/share/libreoffice/help"
MO_DIR = "gettext"
MALLARD_DIR = "gnome/usr/share/help"
APP_MO_DIR = "gnome/usr/share/locale/de"
MIN_WORDS, MAX_WORDS, MAX_RATIO = 3, 30, 2.5

# Special ids of every subword model; the decoder starts from BOS and stops at EOS.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

_SENTENCE_END = re.compile(r"[.?!][\"'”“»«)]*$")
_DING_NOTE = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\]|<[^>]*>)")
_SPACES = re.compile(r"\s+")
_FORMAT = re.compile(r"%(\d+|[a-zA-Z])\b|\$[A-Za-z0-9_]+\$?|\{\w*\}|%\w+%|\\|[<>&]|\{|\}")
_MNEMONIC = re.compile(r"[~_](?=\w)")
_DING_PHRASE = re.compile(r"\b(sth|sb|etw|jdn|jdm|jds)\.")


@dataclass
class Extraction:
    """The pairs of one source and, per filter, how many pairs it removed (in order)."""

    pairs: list[Pair]
    counts: dict[str, int]


def _clean(text: str) -> str:
    return _SPACES.sub(" ", html.unescape(text)).strip()


def _filter(candidates: Iterable[Pair], counts: dict[str, int]) -> list[Pair]:
    """The filters every source shares; ``counts`` gets ``candidates`` and one entry per filter."""
    checks: list[tuple[str, Callable[[str, str], bool]]] = [
        ("removed_empty", lambda en, de: bool(en) and bool(de)),
        ("removed_untranslated", lambda en, de: en != de),
        ("removed_not_sentence_end", lambda en, de: bool(_SENTENCE_END.search(en) and _SENTENCE_END.search(de))),
        ("removed_length", lambda en, de: all(MIN_WORDS <= len(s.split()) <= MAX_WORDS for s in (en, de))),
        (
            "removed_length_ratio",
            lambda en, de: max(len(en), len(de)) <= MAX_RATIO * min(len(en), len(de)),
        ),
    ]
    pairs = [(_clean(en), _clean(de)) for en, de in candidates]
    counts["candidates"] = len(pairs)
    for name, keep in checks:
        kept = [p for p in pairs if keep(*p)]
        counts[name] = len(pairs) - len(kept)
        pairs = kept
    seen_pair: set[Pair] = set()
    seen_en: set[str] = set()
    unique_pairs: list[Pair] = []
    for en, de in pairs:
        if (en, de) not in seen_pair:
            seen_pair.add((en, de))
            unique_pairs.append((en, de))
    counts["removed_duplicate_pair"] = len(pairs) - len(unique_pairs)
    # One translation per English sentence: a repeated source with two targets would be a
    # coin flip for BLEU and, across splits, a leak.
    kept = []
    for en, de in unique_pairs:
        if en.lower() not in seen_en:
            seen_en.add(en.lower())
            kept.append((en, de))
    counts["removed_duplicate_source"] = len(unique_pairs) - len(kept)
    counts["kept"] = len(kept)
    return kept


# --- Ding -------------------------------------------------------------------------------------


def ding_candidates(lines: Iterable[str], counts: dict[str, int]) -> Iterator[Pair]:
    """Aligned alternatives of dictionary lines, as (English, German) with notes stripped.

    Only the aligned ``|`` alternatives are trusted; within one alternative, ``;`` separates
    synonyms, which are paired only when both sides have the same number of them.
    """
    counts.setdefault("lines", 0)
    counts.setdefault("lines_misaligned", 0)
    counts.setdefault("removed_dictionary_phrase", 0)
    for line in lines:
        if line.startswith("#") or " :: " not in line:
            continue
        counts["lines"] += 1
        de_side, en_side = line.rstrip("\n").split(" :: ", 1)
        de_alts, en_alts = de_side.split(" | "), en_side.split(" | ")
        if len(de_alts) != len(en_alts):
            counts["lines_misaligned"] += 1
            continue
        for de_alt, en_alt in zip(de_alts, en_alts, strict=True):
            de_syn, en_syn = de_alt.split("; "), en_alt.split("; ")
            if len(de_syn) != len(en_syn):
                de_syn, en_syn = de_syn[:1], en_syn[:1]
            for de, en in zip(de_syn, en_syn, strict=True):
                en, de = _DING_NOTE.sub("", en).strip(), _DING_NOTE.sub("", de).strip()
                if en and de and _SENTENCE_END.search(en) and not _is_sentence(en):
                    counts["removed_dictionary_phrase"] += 1
                    continue
                yield en, de


def _is_sentence(en: str) -> bool:
    """Ding examples start with a capital; headwords like ``to impose sth. (on sb.)`` do not."""
    return en[0].isupper() and not _DING_PHRASE.search(en)


def extract_ding(path: Path) -> Extraction:
    counts: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        candidates = list(ding_candidates(lines, counts))
    return Extraction(_filter(candidates, counts), counts)


# --- LibreOffice help -------------------------------------------------------------------------


class _ParagraphParser(HTMLParser):
    """Text of every ``<p>``, ``<h1-6>``, ``<td>`` that has an ``id``; nested ones own their text."""

    TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "td"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: dict[str, str] = {}
        self._open: list[tuple[str, str | None, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.TAGS:
            self._open.append((tag, dict(attrs).get("id"), []))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.TAGS and self._open and self._open[-1][0] == tag:
            _, ident, parts = self._open.pop()
            if ident:
                self.paragraphs[ident] = "".join(parts)

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)


def html_paragraphs(path: Path) -> dict[str, str]:
    parser = _ParagraphParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.paragraphs


def help_candidates(help_dir: Path, counts: dict[str, int], limit_files: int | None = None) -> Iterator[Pair]:
    """Pairs by (file, id) between ``en-US/text/**`` and ``de/text/**``."""
    en_files = sorted((help_dir / "en-US" / "text").rglob("*.html"))[:limit_files]
    counts["files"] = counts["files_without_german"] = counts["paragraphs_unmatched"] = 0
    for en_file in en_files:
        de_file = help_dir / "de" / en_file.relative_to(help_dir / "en-US")
        if not de_file.exists():
            counts["files_without_german"] += 1
            continue
        counts["files"] += 1
        en_par, de_par = html_paragraphs(en_file), html_paragraphs(de_file)
        for ident, en in en_par.items():
            if ident in de_par:
                yield en, de_par[ident]
            else:
                counts["paragraphs_unmatched"] += 1


def extract_help(help_dir: Path, limit_files: int | None = None) -> Extraction:
    counts: dict[str, int] = {}
    candidates = list(help_candidates(help_dir, counts, limit_files))
    return Extraction(_filter(candidates, counts), counts)


# --- gettext ----------------------------------------------------------------------------------


def mo_candidates(files: Iterable[Path], counts: dict[str, int]) -> Iterator[Pair]:
    """``msgid → msgstr`` of each catalogue, without plurals, format strings or markup.

    ``%PRODUCTNAME`` becomes ``LibreOffice``; ``~``/``_`` mnemonics are dropped.
    """
    counts["catalogues"] = counts["entries"] = counts["removed_plural_or_header"] = 0
    counts["removed_format_or_markup"] = 0
    for path in files:
        counts["catalogues"] += 1
        with path.open("rb") as handle:
            catalogue = gettext.GNUTranslations(handle)._catalog
        for key, value in catalogue.items():
            counts["entries"] += 1
            if not isinstance(key, str) or not key:
                counts["removed_plural_or_header"] += 1
                continue
            en = key.split("\x04", 1)[-1]
            en, de = (_MNEMONIC.sub("", s.replace("%PRODUCTNAME", "LibreOffice")) for s in (en, value))
            if _FORMAT.search(en) or _FORMAT.search(de) or "\n" in en.strip() or "\n" in de.strip():
                counts["removed_format_or_markup"] += 1
                continue
            yield en, de


def extract_gettext(mo_dir: Path) -> Extraction:
    counts: dict[str, int] = {}
    candidates = list(mo_candidates(sorted(mo_dir.rglob("*.mo")), counts))
    return Extraction(_filter(candidates, counts), counts)


# --- GNOME Mallard help -----------------------------------------------------------------------

_MALLARD_BLOCKS = frozenset({"title", "desc", "p"})


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def mallard_blocks(path: Path) -> list[tuple[str, str]]:
    """``(tag, text)`` of every ``<title>``, ``<desc>``, ``<p>`` of a page, in document order.

    The ``<info>`` header is skipped except its ``<desc>`` (translator credits live there).
    """
    import xml.etree.ElementTree as ET

    blocks: list[tuple[str, str]] = []

    def walk(element: ET.Element, in_info: bool) -> None:
        tag = _local(element.tag)
        if tag in _MALLARD_BLOCKS and (not in_info or tag == "desc"):
            blocks.append((tag, "".join(element.itertext())))
            return
        for child in element:
            walk(child, in_info or tag == "info")

    walk(ET.parse(path).getroot(), False)
    return blocks


def mallard_candidates(help_dir: Path, counts: dict[str, int]) -> Iterator[Pair]:
    """Pairs by position between ``C/<app>/*.page`` and ``de/<app>/*.page``.

    A page is used only when both versions have the same sequence of block tags; otherwise the
    positions cannot be trusted and the page is counted in ``pages_misaligned``.
    """
    counts["pages"] = counts["pages_without_german"] = counts["pages_misaligned"] = 0
    for en_file in sorted((help_dir / "C").rglob("*.page")):
        de_file = help_dir / "de" / en_file.relative_to(help_dir / "C")
        if not de_file.exists():
            counts["pages_without_german"] += 1
            continue
        counts["pages"] += 1
        en_blocks, de_blocks = mallard_blocks(en_file), mallard_blocks(de_file)
        if [t for t, _ in en_blocks] != [t for t, _ in de_blocks]:
            counts["pages_misaligned"] += 1
            continue
        for (_, en), (_, de) in zip(en_blocks, de_blocks, strict=True):
            yield en, de


def extract_mallard(help_dir: Path) -> Extraction:
    counts: dict[str, int] = {}
    candidates = list(mallard_candidates(help_dir, counts))
    return Extraction(_filter(candidates, counts), counts)


def extract_source(name: str, data_dir: Path) -> Extraction:
    root = data_dir / "translation"
    if name == "ding":
        return extract_ding(root / DING_FILE)
    if name == "libreoffice_help":
        return extract_help(root / HELP_DIR)
    if name == "gettext":
        return extract_gettext(root / MO_DIR)
    if name == "gnome_help":
        return extract_mallard(root / MALLARD_DIR)
    if name == "app_gettext":
        return extract_gettext(root / APP_MO_DIR)
    raise ValueError(f"unknown source {name!r}; choose from {SOURCES}")


# --- TSV and frozen splits --------------------------------------------------------------------


def read_tsv(path: Path) -> list[Pair]:
    """``source<TAB>target`` per line; blank lines are skipped, anything else malformed is an error."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected 2 tab-separated fields, got {len(fields)}")
        pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs


def write_tsv(path: Path, pairs: Iterable[Pair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{src}\t{tgt}\n" for src, tgt in pairs), encoding="utf-8")


def split_pairs(name: str, pairs_dir: Path, make_pairs: Callable[[], list[Pair]], seed: int) -> dict[str, list[Pair]]:
    """The frozen train/valid/test split of one source, written on first use and read afterwards.

    A source sentence that occurs in the test or validation split of an *earlier* source (in the
    order sources are loaded) is dropped from this source's training split by ``load_corpus``.
    """
    paths = {split: pairs_dir / f"{name}.{split}.tsv" for split in SPLITS}
    if all(p.exists() for p in paths.values()):
        return {split: read_tsv(p) for split, p in paths.items()}
    pairs = make_pairs()
    parts = split_indices(len(pairs), SPLIT_FRACTIONS, seed)
    splits = {split: [pairs[i] for i in part] for split, part in zip(SPLITS, parts, strict=True)}
    for split, part in splits.items():
        write_tsv(paths[split], part)
    return splits


def load_corpus(
    data_dir: Path, tsv_files: list[Path] | None = None, seed: int = 0, sources: tuple[str, ...] = SOURCES
) -> tuple[dict[str, dict[str, list[Pair]]], dict[str, dict[str, int]]]:
    """Splits per source: the built-in English→German sources, or the given TSV files.

    Returns ``({source: {split: pairs}}, {source: filter counts})`` of the built-in ``sources``.
    Built-in extraction counts are cached in ``<data>/translation/pairs/counts.json``. Training
    pairs whose source sentence appears in any evaluation split (of any loaded source) are removed,
    so the union has no leak.
    """
    pairs_dir = data_dir / "translation" / "pairs"
    counts_path = pairs_dir / "counts.json"
    counts: dict[str, dict[str, int]] = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    corpus: dict[str, dict[str, list[Pair]]] = {}
    if tsv_files:
        for path in tsv_files:
            corpus[path.stem] = split_pairs(path.stem, path.parent / "splits", lambda p=path: read_tsv(p), seed)
    else:
        for name in sources:

            def extract(name: str = name) -> list[Pair]:
                extraction = extract_source(name, data_dir)
                counts[name] = extraction.counts
                return extraction.pairs

            corpus[name] = split_pairs(name, pairs_dir, extract, seed)
        pairs_dir.mkdir(parents=True, exist_ok=True)
        counts_path.write_text(json.dumps(counts, indent=2) + "\n")
    held_out = {src.lower() for splits in corpus.values() for s in ("valid", "test") for src, _ in splits[s]}
    for name, splits in corpus.items():
        before = len(splits["train"])
        splits["train"] = [p for p in splits["train"] if p[0].lower() not in held_out]
        counts.setdefault(name, {})["removed_train_in_heldout"] = before - len(splits["train"])
    return corpus, counts


# --- subwords ---------------------------------------------------------------------------------


def train_sentencepiece(texts: Iterable[str], prefix: Path, vocab_size: int, model_type: str = "bpe") -> Path:
    """A joint subword model over both languages (``prefix.model`` + ``prefix.vocab``).

    Ids ``PAD_ID=0, UNK_ID=1, BOS_ID=2, EOS_ID=3`` are fixed here, so any runtime that loads the
    ``.model`` with plain ``sentencepiece`` agrees with the network on them.
    """
    import sentencepiece as spm

    prefix.parent.mkdir(parents=True, exist_ok=True)
    counter = Counter(texts)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(counter.keys()),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def load_sentencepiece(path: Path):  # -> sentencepiece.SentencePieceProcessor
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))
