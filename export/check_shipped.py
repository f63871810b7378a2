"""``python -m export.check_shipped [models/]``: score the shipped ONNX models on their test splits.

Runs with ONNX Runtime and numpy only (no torch), and fails when a model scores worse than the
figure in its manifest by more than the tolerance: the committed graphs are what was measured.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.repository import Model, load_repository
from server.subword import SubwordBPE
from training.forecast_data import HORIZON, decode, encode, fit_scale, load_panel, prefix_length, season_naive_mae
from training.sentiment_data import Vocabulary, split_snippets
from training.translation_data import read_tsv

DATA = Path("data")


@dataclass(frozen=True)
class Tolerance:
    amount: float
    higher_is_better: bool

    def regressed(self, value: float, recorded: float) -> bool:
        return value < recorded - self.amount if self.higher_is_better else value > recorded + self.amount


TOLERANCE = {"test_accuracy": Tolerance(0.005, higher_is_better=True),
             "test_mase": Tolerance(0.005, higher_is_better=False),
             **{f"test_greedy_bleu_{source}": Tolerance(0.5, higher_is_better=True)
                for source in ("libreoffice_help", "ding", "gettext")}}


def sentiment_accuracy(model: Model, data_dir: Path) -> dict[str, float]:
    """Accuracy of the ``sequence`` graph on the recorded test split."""
    prep = model.manifest["preprocessing"]
    vocab = Vocabulary.load(model.path / prep["vocabulary"])
    test = split_snippets(data_dir / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2")["test"]
    encoded = [vocab.encode(text)[: prep["max_tokens"]] or [prep["unk_id"]] for text in test.texts]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    ids = np.full((len(encoded), lengths.max()), prep["pad_id"], dtype=np.int64)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = tokens
    (probs,) = model.sessions["sequence"].run(None, {"ids": ids, "lengths": lengths})
    return {"test_accuracy": float((probs.argmax(-1) == test.labels).mean())}


def forecast_quantiles(model: Model, histories: list[np.ndarray], start_months: np.ndarray, horizon: int) -> np.ndarray:
    """Quantile forecasts ``[N, horizon, Q]`` in the series' units from the end of every history.

    The training rollout (``training/forecast_model.rollout``) with the ``step`` graph, all
    series in one batch: each reads its last ``prefix + min(context, n - prefix)`` values
    teacher-forced, then feeds its median back. Windows are right-aligned so that every series
    reaches its forecast origin at the same step; a shorter window joins the batch later.
    """
    pre = model.manifest["preprocessing"]
    context, transform, season = pre["scaling"]["context"], pre["scaling"]["transform"], pre["season"]
    lags = tuple(pre["lags"])
    median = pre["quantiles"].index(0.5)
    prefix = prefix_length(lags)
    lengths = np.array([len(h) for h in histories])
    usable = np.minimum(context, lengths - prefix)
    origin = prefix + usable.max()  # the common forecast origin of the right-aligned windows
    scales = np.array([fit_scale(h, u) for h, u in zip(histories, usable, strict=True)])
    z = np.full((len(histories), origin + horizon), np.nan)
    for row, (history, size) in enumerate(zip(histories, usable, strict=True)):
        z[row, origin - prefix - size : origin] = encode(history[-(prefix + size) :], scales[row], transform)
    months0 = start_months + lengths - origin  # month of year (mod season) of column 0
    first_target = origin - usable + 1  # per series: its first step with every lag observed
    session, spec = model.sessions["step"], model.state("step")
    names = [o.name for o in session.get_outputs()]
    state = {s["input"]: np.full((len(histories), *s["shape"]), s["initial"], dtype=np.float32) for s in spec}
    quantiles = np.empty((len(histories), horizon, len(pre["quantiles"])))
    for target in range(first_target.min(), origin + horizon):
        rows = np.flatnonzero(first_target <= target)
        month = np.eye(season)[(months0[rows] + target) % season]
        feed = {name: array[rows] for name, array in state.items()}
        feed["value"] = z[rows, target - 1 : target].astype(np.float32)
        feed["features"] = np.concatenate([month, z[rows][:, [target - lag for lag in lags]]], 1).astype(np.float32)
        results = dict(zip(names, session.run(names, feed), strict=True))
        for s in spec:
            state[s["input"]][rows] = results[s["output"]]
        if target >= origin:
            quantiles[rows, target - origin] = results["quantiles"]
            z[rows, target] = results["quantiles"][:, median]
    return decode(quantiles, scales[:, None, None], transform)


def forecast_mase(model: Model, data_dir: Path) -> dict[str, float]:
    """Mean test MASE of the median over the aus_retail panel (the last ``HORIZON`` months of every series)."""
    panel = load_panel(data_dir / "forecast" / "aus_retail.csv")
    history = panel.cut(HORIZON)
    actuals = np.stack([v[-HORIZON:] for v in panel.values])
    median = model.manifest["preprocessing"]["quantiles"].index(0.5)
    point = forecast_quantiles(model, history.values, history.start_months, HORIZON)[..., median]
    mase = np.abs(actuals - point).mean(axis=1) / np.array([season_naive_mae(v) for v in history.values])
    return {"test_mase": float(mase.mean())}


def translation_sources(model: Model, texts: list[str]) -> list[list[int]]:
    """Source ids as the manifest says: subword pieces + EOS, cut to ``max_length``."""
    pre = model.manifest["preprocessing"]
    tokenizer = SubwordBPE(model.path / pre["subwords"])
    return [[*tokenizer.encode(text), *pre["source_suffix"]][: pre["max_length"]] for text in texts]


def translation_greedy(model: Model, sources: list[list[int]], batch_size: int = 64) -> list[list[int]]:
    """Greedy output ids (EOS dropped) per source, ``training/seq2seq.greedy_decode`` with the two graphs.

    Sources run in batches of similar length, padded with ``pad_id``; each sentence gets at most
    ``min(2 * len(source) + 10, max_length)`` tokens, the last forced to EOS.
    """
    pre = model.manifest["preprocessing"]
    encoder, step = model.sessions["encoder"], model.sessions["decoder_step"]
    step_outputs = [o.name for o in step.get_outputs()]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    results: list[list[int]] = [[] for _ in sources]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        lengths = np.array([len(sources[i]) for i in chunk], dtype=np.int64)
        ids = np.full((len(chunk), lengths.max()), pre["pad_id"], dtype=np.int64)
        for row, i in enumerate(chunk):
            ids[row, : lengths[row]] = sources[i]
        names = [o.name for o in encoder.get_outputs()]
        feed = dict(zip(names, encoder.run(names, {"src_ids": ids, "src_lengths": lengths}), strict=True))
        limits = np.minimum(2 * lengths + 10, pre["max_length"])
        prev = np.full(len(chunk), pre["bos_id"], dtype=np.int64)
        finished = np.zeros(len(chunk), dtype=bool)
        tokens = []
        for t in range(limits.max()):
            out = dict(zip(step_outputs, step.run(step_outputs, {**feed, "prev_tokens": prev}), strict=True))
            feed["state"] = out["new_state"]
            prev = np.where(finished | (t + 1 >= limits), pre["eos_id"], out["log_probs"].argmax(-1))
            tokens.append(prev)
            finished |= prev == pre["eos_id"]
            if finished.all():
                break
        for i, row in zip(chunk, np.stack(tokens, 1).tolist(), strict=True):
            results[i] = row[: row.index(pre["eos_id"])]
    return results


def translation_bleu(model: Model, data_dir: Path) -> dict[str, float]:
    """Greedy sacreBLEU of the two graphs on each test split that the manifest records a score for."""
    import sacrebleu

    tokenizer = SubwordBPE(model.path / model.manifest["preprocessing"]["subwords"])
    scores = {}
    for metric in sorted(m for m in model.manifest["metrics"] if m.startswith("test_greedy_bleu_")):
        pairs = read_tsv(data_dir / "translation" / "pairs" / f"{metric.removeprefix('test_greedy_bleu_')}.test.tsv")
        outputs = translation_greedy(model, translation_sources(model, [source for source, _ in pairs]))
        hypotheses = [tokenizer.decode(ids) for ids in outputs]
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
            evaluate = EVALUATORS.get(model.task)
            if evaluate is None:
                continue
            for metric, value in evaluate(model, data_dir).items():
                recorded = model.manifest["metrics"][metric]
                reference = baselines(model.manifest["metrics"], metric)
                line = f"{name}/{version} {metric}: {value:.4f} (manifest {recorded:.4f}{reference})"
                lines.append(line)
                if TOLERANCE[metric].regressed(value, recorded):
                    failures.append(line)
    if failures:
        raise SystemExit("shipped models regressed:\n" + "\n".join(failures))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path, nargs="?", default=Path("models"))
    args = parser.parse_args(argv)
    for line in check(args.repository):
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
