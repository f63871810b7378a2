"""Habits shared by every training CLI: seeding, splits, early stopping, metrics and curves.

Torch is imported only inside ``set_seed``, so the data modules that use ``split_indices``
stay importable where torch is not installed (the shipped-model checks run without it).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into parts of the given fractions (the last takes the rest)."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([round(f * n) for f in fractions[:-1]])
    return [np.sort(part) for part in np.split(order, cuts)]


class EarlyStopping:
    """Tracks the best validation score; ``step`` returns True when patience has run out."""

    def __init__(self, patience: int, higher_is_better: bool = True) -> None:
        self.patience, self.sign = patience, 1.0 if higher_is_better else -1.0
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0

    def improved(self, score: float, epoch: int) -> bool:
        if self.best is None or self.sign * (score - self.best) > 0:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    """The weights stored in an ONNX graph, by name (to read a shipped version back)."""
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """One panel per metric, epochs on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(history), figsize=(4.5 * len(history), 3.5), squeeze=False)
    for axis, (name, values) in zip(axes[0], history.items(), strict=True):
        axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_commit() -> str:
    """The current commit, with ``-dirty`` when the tree has changes; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def add_config_arguments(
    parser: argparse.ArgumentParser, defaults: Any, choices: dict[str, Sequence[str]] | None = None
) -> None:
    """One ``--flag`` per field of the ``defaults`` dataclass: ``--no-flag`` for booleans, ``choices`` where given."""
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if choices and name in choices:
            parser.add_argument(flag, choices=list(choices[name]), default=value)
        elif isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
