"""Text around translation, torch-free: sentence splitting and spans that are copied, not translated.

The server, the reference runtime (``evaluate/``) and the copy-span test set all use these rules
(``docs/translation.md``, "Paragraphs" and "Copied spans").

- ``split_sentences``: a text becomes sentences, each translated on its own (the model was trained
  on single sentences). A sentence ends at ``.``, ``?``, ``!`` (and any closing quotes or
  brackets) followed by white space and then an upper-case letter, a digit or an opening quote,
  unless the word before is a known abbreviation or a single letter; a line break always ends one.
  A period inside a copied span (a URL, ``3.14``) never ends a sentence.
- ``find_spans``: URLs, e-mail addresses, file paths, code-like tokens (``snake_case``,
  ``camelCase``, ``--option``, ``name.ext``, ``call()``) and numbers with their separators
  (``1,234``, ``3.14159``, ``12:30``). They must appear verbatim in the translation.
- ``restore_spans``: CTranslate2's ``replace_unknowns`` extended to copied spans. Each output piece
  is aligned to the source piece its attention weighs most; a run of output pieces aligned into
  one span is replaced by the span's text (a later run aligned to the same span is dropped), and
  an ``<unk>`` piece by the source text it is aligned to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WORD_START = "\u2581"

_URL = r"(?:https?|ftp)://[^\s<>\"']*[^\s<>\"'.,;:!?)\]]|www\.[\w-]+(?:\.[\w-]+)+(?:/[^\s<>\"']*[^\s<>\"'.,;:!?)\]])?"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_PATH = r"(?<![\w/])(?:~|\.{1,2})?/(?:[\w.+-]+/)*[\w.+-]*[\w+-]|\b[A-Za-z]:\\(?:[\w.+-]+\\)*[\w.+-]*\w"
_CODE = (
    r"\b[\w-]+\.(?:[a-z][a-z0-9]{1,3})\b(?!\.?\w)"  # name.ext (file names, host names)
    r"|(?<![\w-])--?[a-z][\w-]*\w"  # --option, -option
    r"|\b\w+(?:\.\w+)*\(\)"  # call(), module.call()
    r"|\b[a-z]+(?:_\w+)+\b|\b_\w+\b|\b\w+_\b"  # snake_case
    r"|\b[a-z]+[A-Z]\w*\b"  # camelCase
)
_NUMBER = r"(?<![\w.,])\d+(?:[.,:/-]\d+)*(?!\w)"
SPAN = re.compile("|".join(f"(?:{p})" for p in (_URL, _EMAIL, _PATH, _CODE, _NUMBER)))

_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "no",
        "nr",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "fig",
        "approx",
        "ca",
        "incl",
        "max",
        "min",
        "dept",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "z.b",
        "u.a",
        "bzw",
        "usw",
    ]
)
_SENTENCE_END = re.compile(r"[.?!][\"'”“»«)\]]*(?=\s+[\"'“„«(\[]?[A-ZÄÖÜ0-9])|\n\s*")


@dataclass(frozen=True)
class Span:
    """``text[start:end]``, a span that the translation must contain verbatim."""

    start: int
    end: int
    text: str


def find_spans(text: str) -> list[Span]:
    """The copied spans of ``text``, left to right, not overlapping."""
    return [Span(m.start(), m.end(), m.group()) for m in SPAN.finditer(text)]


def split_sentences(text: str) -> list[tuple[str, str]]:
    """``(sentence, separator)`` pairs whose concatenation is ``text`` without its outer white space;
    ``separator`` (the white space after the sentence: ``" "``, ``"\\n"`` or ``""`` for the last) is
    kept so a translation can be joined the same way (``join_sentences``)."""
    text = text.strip()
    spans = find_spans(text)
    cuts: set[int] = set()
    for match in _SENTENCE_END.finditer(text):
        if match.group().startswith("\n"):
            cuts.add(match.start())
        elif not any(s.start <= match.start() < s.end for s in spans) and not _abbreviation_before(text, match.start()):
            cuts.add(match.end())
    sentences: list[tuple[str, str]] = []
    start = 0
    for cut in [*sorted(cuts), len(text)]:
        sentence = text[start:cut].strip()
        rest = text[cut:]
        gap = rest[: len(rest) - len(rest.lstrip())]
        if sentence:
            sentences.append((sentence, "\n" if "\n" in gap else " " if gap else ""))
        start = cut
    if sentences:
        sentences[-1] = (sentences[-1][0], "")
    return sentences


def _abbreviation_before(text: str, period: int) -> bool:
    if text[period] != ".":
        return False
    word = re.search(r"[\w.]*$", text[:period]).group().lower()  # type: ignore[union-attr]
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def join_sentences(translations: list[str], separators: list[str]) -> str:
    """The translated sentences joined by their source's separators (a line break stays one)."""
    return "".join(t + s for t, s in zip(translations, separators, strict=True))


def restore_spans(
    source: str,
    source_offsets: list[tuple[int, int]],
    output_pieces: list[str],
    alignment: list[int],
    unk_piece: str = "<unk>",
) -> str:
    """The output text with copied spans restored (module docstring).

    ``source_offsets``: each source piece's character range in ``source`` (positions past them, the
    EOS suffix, belong to no span); ``output_pieces``: the output's sentencepiece pieces (``▁``
    starts a word); ``alignment``: for each output piece, the source position its attention weighs
    most. Only spans missing from the plain output are restored, and only output pieces made of the
    span's characters are replaced (up to the span's length), so a word that merely attends to a
    span stays; a missing span without such pieces goes in front of the first piece aligned to it.
    """
    plain = _text(output_pieces)
    spans = [s for s in find_spans(source) if plain.count(s.text) < source.count(s.text)]
    if not spans and unk_piece not in output_pieces:  # nothing to restore or replace (most sentences)
        return plain
    owner = [
        next((k for k, s in enumerate(spans) if begin < s.end and s.start < end), -1) for begin, end in source_offsets
    ]
    aligned = [owner[position] if position < len(owner) else -1 for position in alignment]
    # A span that no output piece attends to goes after the last piece aligned before it (monotonic order).
    anchors: dict[int, list[int]] = {}
    for k in set(range(len(spans))) - set(aligned):
        first = min((j for j, o in enumerate(owner) if o == k), default=len(owner))
        anchors.setdefault(max((i for i, p in enumerate(alignment) if p < first), default=-1), []).append(k)
    pieces: list[str] = []
    placed: set[int] = set()
    waiting: list[int] = []  # spans to put in front of the next word
    run, run_chars = -1, 0  # the span whose pieces are being replaced, and their characters so far
    for i, (piece, k, position) in enumerate(zip(output_pieces, aligned, alignment, strict=True)):
        bare = piece.lstrip(WORD_START)
        waiting.extend(anchors.get(i - 1, []))
        if piece.startswith(WORD_START) or not pieces:
            pieces.extend(_spaced(source, spans[w], WORD_START) for w in waiting)
            waiting = []
        if k >= 0 and bare and set(bare) <= set(spans[k].text):
            if k == run and run_chars + len(bare) <= len(spans[k].text):
                run_chars += len(bare)
                continue
            run, run_chars = k, len(bare)
            if k not in placed:
                placed.add(k)
                pieces.append(_spaced(source, spans[k], piece))
            continue
        run = -1
        if k >= 0 and k not in placed:
            placed.add(k)
            if piece.startswith(WORD_START) or not pieces:
                pieces.append(_spaced(source, spans[k], WORD_START))
            else:
                waiting.append(k)
        if piece == unk_piece and position < len(source_offsets):
            begin, end = source_offsets[position]
            piece = (WORD_START if source[begin:end].startswith(" ") else "") + source[begin:end].strip()
        pieces.append(piece)
    waiting.extend(anchors.get(len(output_pieces) - 1, []))
    pieces.extend(_spaced(source, spans[w], WORD_START) for w in waiting)
    return _text(pieces)


def _text(pieces: list[str]) -> str:
    return "".join(pieces).replace(WORD_START, " ").strip()


def _spaced(source: str, span: Span, piece: str) -> str:
    """The span's text, starting a word where it does in the source or where ``piece`` did."""
    starts_word = span.start == 0 or source[span.start - 1].isspace() or piece.startswith(WORD_START)
    return (WORD_START if starts_word else "") + span.text
