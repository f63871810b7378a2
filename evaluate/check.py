"""The check of the shipped models: score each on its test split and compare with its manifest.

The scores come from the reference runtime (ONNX Runtime and numpy, no torch); only the test
splits are read with the data loaders of ``training/`` (pandas for the forecast panel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.repository import Model, load_repository
from evaluate.forecast import forecast_quantiles
from evaluate.forecast import preprocessing as forecast_preprocessing
from evaluate.sentiment import sentiment_probs
from evaluate.translation import tokenizer, translation_greedy, translation_sources
from training.forecast_data import HORIZON, Panel, holdout_panel, load_panel, season_naive_mae
from training.sentiment_data import MIXED_SIZES, MOVIE_BUCKETS, Split, long_texts, split_snippets
from training.translation_data import SOURCES as TRANSLATION_SOURCES
from training.translation_data import read_tsv

DATA = Path("data")


@dataclass(frozen=True)
class Tolerance:
    amount: float
    higher_is_better: bool

    def regressed(self, value: float, recorded: float) -> bool:
        return value < recorded - self.amount if self.higher_is_better else value > recorded + self.amount


LONG_TEXT = "long_text_accuracy_"  # + a bucket of the long-text set (training.sentiment_data.long_texts)
TOLERANCE = {"test_accuracy": Tolerance(0.005, higher_is_better=True),
             **{f"{LONG_TEXT}{bucket}": Tolerance(0.005, higher_is_better=True)
                for bucket in (*(name for name, _, _ in MOVIE_BUCKETS), *(f"mixed_{n}" for n in MIXED_SIZES))},
             "test_mase": Tolerance(0.005, higher_is_better=False),
             "holdout_mase": Tolerance(0.005, higher_is_better=False),
             **{f"test_greedy_bleu_{source}": Tolerance(0.5, higher_is_better=True)
                for source in TRANSLATION_SOURCES}}


def sentiment_accuracy(model: Model, data_dir: Path) -> dict[str, float]:
    """Accuracy of the ``sequence`` graph on the recorded test split, and on each bucket of the long-text set that
    the manifest records a score for."""
    test = split_snippets(data_dir / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2")["test"]
    scores = {"test_accuracy": accuracy(model, test)}
    for bucket, texts in long_texts(test).items():
        if f"{LONG_TEXT}{bucket}" in model.manifest.metrics:
            scores[f"{LONG_TEXT}{bucket}"] = accuracy(model, texts)
    return scores


def accuracy(model: Model, split: Split, first: int | None = None) -> float:
    """Of the ``sequence`` graph over whole texts, or over their ``first`` tokens."""
    return float((sentiment_probs(model, split.texts, first).argmax(-1) == split.labels).mean())


def forecast_mase(model: Model, data_dir: Path) -> dict[str, float]:
    """Mean MASE of the median over the last ``HORIZON`` months of every series: ``test_mase`` on the
    aus_retail panel and, when the manifest records it, ``holdout_mase`` on the frozen hold-out."""
    panels = {"test_mase": load_panel(data_dir / "forecast" / "aus_retail.csv")}
    if "holdout_mase" in model.manifest.metrics:
        panels["holdout_mase"] = holdout_panel(data_dir / "forecast")
    return {metric: _mase(model, panel) for metric, panel in panels.items()}


def _mase(model: Model, panel: Panel) -> float:
    pre = forecast_preprocessing(model)
    history = panel.cut(HORIZON)
    actuals = np.stack([v[-HORIZON:] for v in panel.values])
    point = forecast_quantiles(model, history.values, history.start_months, HORIZON)[..., pre.median]
    naive = np.array([season_naive_mae(v, pre.season) for v in history.values])
    return float((np.abs(actuals - point).mean(axis=1) / naive).mean())


def translation_bleu(model: Model, data_dir: Path) -> dict[str, float]:
    """Greedy sacreBLEU of the two graphs on each test split that the manifest records a score for."""
    import sacrebleu

    subwords = tokenizer(model)
    scores = {}
    for metric in sorted(m for m in model.manifest.metrics if m.startswith("test_greedy_bleu_")):
        pairs = read_tsv(data_dir / "translation" / "pairs" / f"{metric.removeprefix('test_greedy_bleu_')}.test.tsv")
        outputs = translation_greedy(model, translation_sources(model, [source for source, _ in pairs]))
        hypotheses = [subwords.decode(ids) for ids in outputs]
        scores[metric] = sacrebleu.corpus_bleu(hypotheses, [[target for _, target in pairs]]).score
    return scores


EVALUATORS: dict[str, Callable[[Model, Path], dict[str, float]]] = {
    "sentiment": sentiment_accuracy,
    "forecast": forecast_mase,
    "translation": translation_bleu,
}


def baselines(metrics: dict, metric: str) -> str:
    """``; seasonal_naive 1.4647, ets 1.2695`` for the baselines in the manifest that report ``metric``."""
    found = [f"{name} {row[metric]:.4f}" for name, row in metrics.get("baselines", {}).items() if metric in row]
    return "; " + ", ".join(found) if found else ""


def check(repository: Path, data_dir: Path = DATA) -> list[str]:
    """One line per checked metric; raises ``SystemExit`` naming every regression."""
    lines, failures = [], []
    for name, versions in load_repository(repository).items():
        for version, model in versions.items():
            score = EVALUATORS.get(model.task)
            if score is None:
                continue
            for metric, value in score(model, data_dir).items():
                recorded = model.manifest.metrics[metric]
                reference = baselines(model.manifest.metrics, metric)
                line = f"{name}/{version} {metric}: {value:.4f} (manifest {recorded:.4f}{reference})"
                lines.append(line)
                if TOLERANCE[metric].regressed(value, recorded):
                    failures.append(line)
    if failures:
        raise SystemExit("shipped models regressed:\n" + "\n".join(failures))
    return lines
