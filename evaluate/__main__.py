"""``python -m evaluate [models/] [--data data/]``: score the shipped ONNX models on their test splits.

Runs with ONNX Runtime and numpy only (no torch), and fails when a model scores worse than the
figure in its manifest by more than the tolerance (``evaluate/check.py``): the committed graphs
are what was measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluate.check import DATA, check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path, nargs="?", default=Path("models"))
    parser.add_argument("--data", type=Path, default=DATA, help="the data sets (make data)")
    args = parser.parse_args(argv)
    for line in check(args.repository, args.data):
        print(line, flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
