"""``python -m training <task> [options]``: one CLI for every task; ``--help`` on each."""

from __future__ import annotations

import importlib
import sys

TASKS = {
    "sentiment": "training.sentiment",
    "forecast": "training.forecast",
    "translation": "training.translation",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        print(f"usage: python -m training {{{','.join(TASKS)}}} [options]   (each task takes --help)")
        raise SystemExit(2)
    importlib.import_module(TASKS[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
