"""``make compare-sentiment``: rnn vs lstm vs gru on the sentiment task, same settings otherwise.

    python -m training.compare_cells [--out runs/compare] [any sentiment option, e.g. --epochs 12]

Trains one model per cell with ``training.sentiment`` and writes ``table.md``: parameters,
median seconds per epoch, test accuracy overall and by snippet length.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.sentiment import LENGTH_BUCKETS, RNN_MODULES
from training.sentiment import main as train_sentiment


def table(results: dict[str, dict]) -> str:
    buckets = [name for name, _, _ in LENGTH_BUCKETS]
    lines = [
        "| cell | parameters | s/epoch | epochs (best) | test accuracy | macro-F1 | " + " | ".join(buckets) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(buckets),
    ]
    for cell, m in results.items():
        by_length = " | ".join(f"{m['test_accuracy_by_length'][b]['accuracy']:.1%}" for b in buckets)
        lines.append(
            f"| {cell} | {m['parameters']:,} | {m['seconds_per_epoch']:.1f} | {m['epochs_run']} ({m['best_epoch']}) "
            f"| {m['test_accuracy']:.1%} | {m['test_macro_f1']:.3f} | {by_length} |"
        )
    counts = ", ".join(f"{b}: {m['test_accuracy_by_length'][b]['count']}" for b in buckets)
    return "\n".join(lines) + f"\n\nTest snippets per length bucket: {counts}.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    args, sentiment_args = parser.parse_known_args(argv)
    results = {}
    for cell in ("rnn", "lstm", "gru"):
        assert cell in RNN_MODULES
        train_sentiment(["--cell", cell, "--out", str(args.out / cell), *sentiment_args])
        results[cell] = json.loads((args.out / cell / "metrics.json").read_text())
    (args.out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
