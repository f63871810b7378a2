"""The copy-span test set and its score: are numbers, URLs, paths and code reproduced verbatim?

    python -m evaluate.copy_spans build [--data data]     # writes evaluate/copy_spans.tsv (once)
    python -m evaluate.copy_spans score models/translation/1 [--data data]
    python -m evaluate.copy_spans splits models/translation/1 [--data data]   # BLEU on every test split

**The set** (``build``, frozen in ``evaluate/copy_spans.tsv``): every pair of the ``test`` and then the
``valid`` splits of each translation source (in ``training.translation_data.SOURCES`` order, file order
within) whose English has at least one span by ``contract.segments.find_spans``. The test splits alone
hold 120 such sentences, under the 200 asked for, so the validation splits (never trained on either)
are added; ``score`` reports the test part separately. The file is written once and read afterwards.

**The score**: a span counts as reproduced when the translation contains its text verbatim (a text
that occurs twice in the source must occur twice). Greedy decoding, raw (``Subwords.decode``) and with
``contract.segments.restore_spans`` after ``split_sentences`` (as the server does); BLEU against the
references for both. ``splits`` compares the two ways on the whole test split of every source, so that
the method is seen not to cost BLEU where there is nothing to copy.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from contract.repository import Model, load_model
from contract.segments import find_spans, join_sentences, restore_spans, split_sentences
from evaluate.translation import preprocessing, tokenizer, translation_greedy_aligned
from training.translation_data import SOURCES, Pair, read_tsv

SET = Path(__file__).with_name("copy_spans.tsv")
SPLITS = ("test", "valid")


def build(data_dir: Path, path: Path = SET) -> list[tuple[str, Pair]]:
    """``(split, pair)`` of the set; written to ``path`` (split, English, German) on first use."""
    if path.exists():
        return [(split, (en, de)) for split, en, de in (line.split("\t") for line in _lines(path))]
    found = [
        (split, pair)
        for split in SPLITS
        for source in SOURCES
        for pair in read_tsv(data_dir / "translation" / "pairs" / f"{source}.{split}.tsv")
        if find_spans(pair[0])
    ]
    path.write_text("".join(f"{split}\t{en}\t{de}\n" for split, (en, de) in found), encoding="utf-8")
    return found


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def reproduced(source: str, output: str) -> tuple[int, int]:
    """``(spans reproduced verbatim, spans)`` of one translation."""
    wanted = Counter(span.text for span in find_spans(source))
    return sum(min(n, output.count(text)) for text, n in wanted.items()), sum(wanted.values())


def translate(model: Model, texts: list[str]) -> tuple[list[str], list[str]]:
    """Greedy translations of ``texts``: as decoded (one sequence per text, as version 1 was served) and
    as the server translates now: sentence by sentence (``split_sentences``) with the copied spans
    restored."""
    pre, subwords = preprocessing(model), tokenizer(model)
    sentences = [split_sentences(text) for text in texts]
    flat = [text for parts in sentences for text, _ in parts]
    encoded = [subwords.encode_with_offsets(text) for text in [*texts, *flat]]
    sources = [pre.output_length.source(ids, pre.source_suffix) for ids, _ in encoded]
    outputs = translation_greedy_aligned(model, sources)
    raw = [subwords.decode(ids) for ids, _ in outputs[: len(texts)]]
    restored = iter(
        restore_spans(text, offsets, [subwords.processor.id_to_piece(i) for i in ids], alignment)
        for text, (_, offsets), (ids, alignment) in zip(flat, encoded[len(texts) :], outputs[len(texts) :], strict=True)
    )
    joined = [join_sentences([next(restored) for _ in parts], [sep for _, sep in parts]) for parts in sentences]
    return raw, joined


def score(model: Model, rows: list[tuple[str, Pair]]) -> dict[str, dict[str, float]]:
    import sacrebleu

    raw, restored = translate(model, [en for _, (en, _) in rows])
    results: dict[str, dict[str, float]] = {}
    for part in ("all", *SPLITS):
        chosen = [i for i, (split, _) in enumerate(rows) if part in ("all", split)]
        refs = [rows[i][1][1] for i in chosen]
        for label, outputs in (("raw", raw), ("restored", restored)):
            counts = [reproduced(rows[i][1][0], outputs[i]) for i in chosen]
            hits, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
            results[f"{part}/{label}"] = {
                "sentences": len(chosen),
                "spans": total,
                "copied": round(100 * hits / total, 2),
                "bleu": round(sacrebleu.corpus_bleu([outputs[i] for i in chosen], [refs]).score, 2),
            }
    return results


def splits(model: Model, data_dir: Path) -> dict[str, dict[str, float]]:
    """Greedy BLEU and chrF of every source's test split, as decoded and as served (``translate``)."""
    import sacrebleu

    results = {}
    for source in SOURCES:
        pairs = read_tsv(data_dir / "translation" / "pairs" / f"{source}.test.tsv")
        refs = [[de for _, de in pairs]]
        raw, served = translate(model, [en for en, _ in pairs])
        results[source] = {"pairs": len(pairs)} | {
            f"{label}_{name}": round(metric(outputs, refs).score, 2)
            for label, outputs in (("raw", raw), ("served", served))
            for name, metric in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf))
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluate.copy_spans", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "score", "splits"])
    parser.add_argument("model", type=Path, nargs="?", help="a version folder, e.g. models/translation/1")
    parser.add_argument("--data", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    rows = build(args.data)
    if args.command == "build":
        print(f"{SET}: {len(rows)} sentences, {sum(len(find_spans(en)) for _, (en, _) in rows)} spans")
        return
    if args.model is None:
        parser.error(f"{args.command} needs a model folder")
    model = load_model(args.model)
    found = score(model, rows) if args.command == "score" else splits(model, args.data)
    for part, row in found.items():
        print(f"{args.model} {part}: {row}")


if __name__ == "__main__":
    main()
