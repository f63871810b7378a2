"""``contract/segments.py``: copied spans, sentence splitting and span restoring (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.segments import WORD_START, find_spans, join_sentences, restore_spans, split_sentences
from contract.subword import Subwords

SPM = Path(__file__).resolve().parents[1] / "models" / "translation" / "1" / "spm.model"
W = WORD_START


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ("Pi is 3.14159.", ["3.14159"]),
        ("In 2023, 1,234 people paid $56.78 each.", ["2023", "1,234", "56.78"]),
        ("Open https://www.example.com/path?q=1&x=2 now.", ["https://www.example.com/path?q=1&x=2"]),
        ("Write to jane.doe@example.org, please.", ["jane.doe@example.org"]),
        ("Edit /etc/fstab or ~/.bashrc first.", ["/etc/fstab", "~/.bashrc"]),
        ("Call odd_integers() with --verbose on sf_test.py.", ["odd_integers()", "--verbose", "sf_test.py"]),
        ("Use getValue and the F5 key.", ["getValue"]),
        ("The meeting is on 1999-03-31 at 12:30.", ["1999-03-31", "12:30"]),
        ("Press F5 to start the MP3 player.", []),
    ],
)
def test_find_spans(text: str, spans: list[str]) -> None:
    found = find_spans(text)
    assert [s.text for s in found] == spans
    assert all(text[s.start : s.end] == s.text for s in found)


def test_split_sentences_keeps_abbreviations_spans_and_line_breaks() -> None:
    text = "Dr. Smith paid 3.50 dollars. See www.example.com for more! Is it e.g. fine?\nNew line. 2 more."
    parts = split_sentences(text)
    assert parts == [
        ("Dr. Smith paid 3.50 dollars.", " "),
        ("See www.example.com for more!", " "),
        ("Is it e.g. fine?", "\n"),
        ("New line.", " "),
        ("2 more.", ""),
    ]
    assert join_sentences([s for s, _ in parts], [sep for _, sep in parts]) == text


def test_split_sentences_of_one_sentence_and_of_white_space() -> None:
    assert split_sentences("  no end mark here  ") == [("no end mark here", "")]
    assert split_sentences(" \n ") == []


def test_restore_replaces_a_mangled_number_by_the_source_span() -> None:
    source = "Pi is 3.14159."
    offsets = [(0, 2), (2, 5), (5, 7), (7, 8), (8, 10), (10, 13), (13, 14), (14, 14)]  # ▁Pi ▁is ▁3 . 14 159 . EOS
    # "Pi ist 31159-Feldung." where "▁3", "11", "59" attend to the number and "-Feldung" to the final period
    pieces = [f"{W}Pi", f"{W}ist", f"{W}3", "11", "59", "-", "Feld", "ung", "."]
    alignment = [0, 1, 2, 4, 5, 6, 6, 6, 6]
    assert restore_spans(source, offsets, pieces, alignment) == "Pi ist 3.14159-Feldung."


def test_restore_keeps_words_that_only_attend_to_a_span_and_spans_already_there() -> None:
    source = "Wait 10 minutes and 5 more."
    offsets = [(0, 4), (4, 7), (7, 15), (15, 19), (19, 21), (21, 26), (26, 27), (27, 27)]
    # "Warte 10 Minuten und noch fünf.": "▁noch" attends to 5, which is missing and goes in front of it
    pieces = [f"{W}Warte", f"{W}10", f"{W}Minuten", f"{W}und", f"{W}noch", f"{W}fünf", "."]
    alignment = [0, 1, 2, 3, 4, 5, 6]
    assert restore_spans(source, offsets, pieces, alignment) == "Warte 10 Minuten und 5 noch fünf."


def test_restore_puts_an_unattended_span_after_what_precedes_it_and_replaces_unknowns() -> None:
    source = "Mail a@b.de or ☃ now."
    offsets = [(0, 4), (4, 11), (11, 14), (14, 16), (16, 20), (20, 21), (21, 21)]
    pieces = [f"{W}Schreib", f"{W}oder", "<unk>", f"{W}jetzt", "."]
    alignment = [0, 2, 3, 4, 5]
    assert restore_spans(source, offsets, pieces, alignment) == "Schreib a@b.de oder ☃ jetzt."


def test_offsets_are_characters_not_bytes() -> None:
    subwords = Subwords(SPM)
    text = "Größe 3.14 über https://x.de/ä"
    ids, offsets = subwords.encode_with_offsets(text)
    assert ids == subwords.encode(text)
    assert "".join(text[b:e] for b, e in offsets) == text
