"""``python -m export <task> --checkpoint runs/<task>/model.pt --out models/``

Writes ``<out>/<name>/<version>/``: the task's ONNX graphs, its preprocessing files and
``manifest.json`` (see ``docs/manifest.md``). Run one export per process: the dynamo exporter
has been seen freezing a dynamic axis when a second LSTM is exported in the same process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
from pathlib import Path

TASKS = {"sentiment": "export.sentiment", "forecast": "export.forecast", "translation": "export.translation"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--checkpoint", type=Path, required=True, help="model.pt written by python -m training")
    parser.add_argument("--out", type=Path, default=Path("models"), help="the model repository (default: models)")
    parser.add_argument("--name", help="model name in the repository (default: the task)")
    parser.add_argument("--version", type=int, default=1, help="positive integer (default: 1, replaced if present)")
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error("--version must be a positive integer")
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} does not exist; train first: python -m training {args.task}")
    metrics_path = args.checkpoint.parent / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    out_dir = args.out / (args.name or args.task) / str(args.version)
    shutil.rmtree(out_dir, ignore_errors=True)
    manifest = importlib.import_module(TASKS[args.task]).export(args.checkpoint, out_dir, metrics)
    print(f"export: {args.task} -> {manifest}")


if __name__ == "__main__":
    main()
