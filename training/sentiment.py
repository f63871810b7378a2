"""Many-to-one sentiment: a left-to-right recurrent classifier on Rotten Tomatoes snippets.

    python -m training sentiment [--cell lstm|gru|rnn] [--out runs/sentiment] ...

The model reads tokens left to right and can give a probability after every token:
the classifier sees the top layer's last hidden state and, with ``--pool meanmax``, the
running mean and maximum of all hidden states so far. Running pools are cheap recurrent
state too, so the served step graph stays one step per token.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from training.common import EarlyStopping, add_config_arguments, git_commit, plot_curves, set_seed, write_json
from training.sentiment_data import Split, Vocabulary, load_plots, split_snippets, tokenize
from training.word_vectors import embedding_init

DATA_FILE = Path("data/sentiment/rotten_tomatoes_corpus_full.csv.bz2")
LENGTH_BUCKETS = (("1-15 tokens", 1, 15), ("16-30 tokens", 16, 30), ("31+ tokens", 31, 10**9))
RNN_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class Config:
    cell: str = "lstm"
    embed: int = 200
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.5
    pool: str = "meanmax"
    word_vectors: bool = True
    vocab_plots: bool = False
    freeze_embeddings: bool = False
    max_tokens: int = 64
    min_count: int = 2
    epochs: int = 12
    pretrain_epochs: int = 0
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    seed: int = 0
    subset: int = 0
    threads: int = 0


class SentimentModel(nn.Module):
    def __init__(self, vocab_size: int, cfg: Config) -> None:
        super().__init__()
        self.pool = cfg.pool
        self.embedding = nn.Embedding(vocab_size, cfg.embed, padding_idx=0)
        self.rnn = RNN_MODULES[cfg.cell](
            cfg.embed, cfg.hidden, cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(cfg.dropout)
        features = cfg.hidden * (3 if cfg.pool == "meanmax" else 1)
        self.classifier = nn.Linear(features, 2)
        # Next-word prediction head, used only by optional language-model pretraining.
        self.lm_head = nn.Linear(cfg.hidden, vocab_size) if cfg.pretrain_epochs else None

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Top-layer hidden state after every token: ``[batch, time, hidden]``."""
        outputs, _ = self.rnn(self.dropout(self.embedding(ids)))
        return outputs

    def logits_per_token(self, ids: torch.Tensor) -> torch.Tensor:
        """Class logits after every token, ``[batch, time, 2]``; right padding never leaks left."""
        states = self.hidden_states(ids)
        if self.pool == "meanmax":
            steps = torch.arange(1, ids.shape[1] + 1, device=ids.device, dtype=states.dtype)
            running_mean = states.cumsum(dim=1) / steps[None, :, None]
            running_max = states.cummax(dim=1).values
            states = torch.cat([states, running_mean, running_max], dim=-1)
        return self.classifier(self.dropout(states))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits after each text's last token, ``[batch, 2]``: ``logits_per_token`` at ``lengths - 1``,
        computed with masks instead of running pools so that it exports as one graph."""
        states = self.hidden_states(ids)
        features = states[torch.arange(ids.shape[0]), lengths - 1]
        if self.pool == "meanmax":
            valid = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None])[..., None]
            mean = (states * valid).sum(dim=1) / lengths[:, None].to(states.dtype)
            maximum = states.masked_fill(~valid, float("-inf")).amax(dim=1)
            features = torch.cat([features, mean, maximum], dim=-1)
        return self.classifier(self.dropout(features))


def encode_batch(vocab: Vocabulary, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [(vocab.encode(text)[:max_tokens] or [vocab.index["<unk>"]]) for text in texts]
    lengths = torch.tensor([len(ids) for ids in encoded])
    ids = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, lengths


def batches(split: Split, batch_size: int, rng: np.random.Generator | None):
    """Shuffled batches when ``rng`` is given, else in order."""
    order = rng.permutation(len(split.texts)) if rng is not None else np.arange(len(split.texts))
    for start in range(0, len(order), batch_size):
        part = order[start : start + batch_size]
        yield [split.texts[i] for i in part], torch.from_numpy(split.labels[part])


@torch.no_grad()
def predict(model: SentimentModel, vocab: Vocabulary, texts: list[str], cfg: Config) -> np.ndarray:
    """Positive-class probabilities."""
    model.eval()
    probs = []
    for start in range(0, len(texts), 256):
        ids, lengths = encode_batch(vocab, texts[start : start + 256], cfg.max_tokens)
        probs.append(torch.softmax(model(ids, lengths), dim=-1)[:, 1].numpy())
    return np.concatenate(probs)


def scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predicted = (probs >= 0.5).astype(np.int64)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro")),
    }


def accuracy_by_length(split: Split, probs: np.ndarray) -> dict[str, dict[str, float]]:
    """Accuracy per token-count bucket: do longer snippets favour one cell over another?"""
    lengths = np.array([len(tokenize(text)) for text in split.texts])
    correct = (probs >= 0.5) == split.labels
    buckets = {}
    for name, low, high in LENGTH_BUCKETS:
        chosen = (lengths >= low) & (lengths <= high)
        buckets[name] = {"accuracy": float(correct[chosen].mean()), "count": int(chosen.sum())}
    return buckets


def tfidf_baseline(splits: dict[str, Split]) -> dict[str, float]:
    """TF-IDF word 1–2 grams + logistic regression, C tuned on validation, scored on test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    train_x = vectorizer.fit_transform(splits["train"].texts)
    best: tuple[float, float, LogisticRegression] | None = None
    for c in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0):
        classifier = LogisticRegression(C=c, max_iter=2000).fit(train_x, splits["train"].labels)
        accuracy = classifier.score(vectorizer.transform(splits["validation"].texts), splits["validation"].labels)
        if best is None or accuracy > best[0]:
            best = (accuracy, c, classifier)
    assert best is not None
    test_probs = best[2].predict_proba(vectorizer.transform(splits["test"].texts))[:, 1]
    return {"C": best[1], "validation_accuracy": float(best[0]), **scores(splits["test"].labels, test_probs)}


def pretrain_language_model(model: SentimentModel, vocab: Vocabulary, texts: list[str], cfg: Config) -> list[float]:
    """Next-word prediction on unlabelled in-domain text (ULMFiT's first stage); returns epoch losses."""
    assert model.lm_head is not None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stream = torch.tensor([i for text in texts for i in [*vocab.encode(text), 0]])
    window = cfg.max_tokens
    rows = stream[: len(stream) // (window + 1) * (window + 1)].view(-1, window + 1)
    losses = []
    for _ in tqdm(range(cfg.pretrain_epochs), desc="pretrain", unit="epoch"):
        model.train()
        total, count = 0.0, 0
        bar = tqdm(torch.randperm(len(rows)).split(cfg.batch_size), desc="lm batches", leave=False)
        for index in bar:
            chunk = rows[index]
            logits = model.lm_head(model.dropout(model.hidden_states(chunk[:, :-1])))
            loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), ignore_index=0)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total, count = total + loss.item(), count + 1
            bar.set_postfix(loss=f"{total / count:.3f}")
        losses.append(total / count)
    return losses


def train(cfg: Config, out: Path, data_file: Path = DATA_FILE) -> dict:
    """Train, early-stop on validation accuracy, evaluate on test.

    Writes ``model.pt``, ``vocab.json``, ``metrics.json`` and ``curves.png`` into ``out``.
    """
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    splits = split_snippets(data_file, seed=0)
    if cfg.subset:
        splits = {name: Split(s.texts[: cfg.subset], s.labels[: cfg.subset]) for name, s in splits.items()}
    # Unlabelled plot descriptions widen the vocabulary: with pretrained vectors, a word never
    # seen in a labelled training snippet still starts from a meaningful embedding.
    vocab_texts = splits["train"].texts + (load_plots(data_file) if cfg.vocab_plots else [])
    vocab = Vocabulary.build(vocab_texts, cfg.min_count)
    model = SentimentModel(len(vocab), cfg)
    if cfg.word_vectors:
        with torch.no_grad():
            model.embedding.weight.copy_(embedding_init(vocab.words[2:], cfg.embed))
        model.embedding.weight.requires_grad_(not cfg.freeze_embeddings)
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "vocab.json")

    pretrain_losses = []
    if cfg.pretrain_epochs:
        pretrain_losses = pretrain_language_model(model, vocab, load_plots(data_file) + splits["train"].texts, cfg)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    stopper = EarlyStopping(cfg.patience)
    rng = np.random.default_rng(cfg.seed)
    history: dict[str, list[float]] = {"train loss": [], "validation accuracy": []}
    epoch_seconds = []
    best_state = None
    epochs = tqdm(range(cfg.epochs), desc=f"sentiment {cfg.cell}", unit="epoch")
    for epoch in epochs:
        model.train()
        epoch_start, total, count = time.time(), 0.0, 0
        bar = tqdm(batches(splits["train"], cfg.batch_size, rng), desc=f"epoch {epoch + 1}", leave=False,
                   total=-(-len(splits["train"].texts) // cfg.batch_size))
        for texts, labels in bar:
            ids, lengths = encode_batch(vocab, texts, cfg.max_tokens)
            loss = F.cross_entropy(model(ids, lengths), labels)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total, count = total + loss.item() * len(texts), count + len(texts)
            bar.set_postfix(loss=f"{total / count:.4f}")
        schedule.step()
        epoch_seconds.append(time.time() - epoch_start)
        validation = scores(splits["validation"].labels, predict(model, vocab, splits["validation"].texts, cfg))
        history["train loss"].append(total / count)
        history["validation accuracy"].append(validation["accuracy"])
        if stopper.improved(validation["accuracy"], epoch):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        epochs.set_postfix(loss=f"{total / count:.4f}", val_acc=f"{validation['accuracy']:.4f}",
                           best=f"{stopper.best:.4f}")
        if stopper.should_stop:
            break

    assert best_state is not None
    model.load_state_dict(best_state)
    test_probs = predict(model, vocab, splits["test"].texts, cfg)
    test = scores(splits["test"].labels, test_probs)
    model.lm_head = None  # the pretraining head is not part of the classifier
    torch.save({"config": asdict(cfg), "state_dict": {k: v for k, v in model.state_dict().items()}}, out / "model.pt")
    plot_curves(history, out / "curves.png", f"sentiment, {cfg.cell}")
    metrics = {
        "task": "sentiment",
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_accuracy_by_length": accuracy_by_length(splits["test"], test_probs),
        "validation_accuracy": stopper.best,
        "best_epoch": stopper.best_epoch + 1,
        "epochs_run": len(history["train loss"]),
        "seconds_per_epoch": float(np.median(epoch_seconds)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocabulary": len(vocab),
        "dataset_sizes": {name: len(s.texts) for name, s in splits.items()},
        "seed": cfg.seed,
        "split_seed": 0,
        "wall_seconds": time.time() - started,
        "pretrain_losses": pretrain_losses,
        "tfidf_baseline": tfidf_baseline(splits),
        "config": asdict(cfg),
        "git_commit": git_commit(),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(prog="python -m training sentiment", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, Config(), {"cell": sorted(RNN_MODULES), "pool": ["last", "meanmax"]})
    parser.add_argument("--out", type=Path, default=Path("runs/sentiment"))
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    return Config(**args), out


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    metrics = train(cfg, out)
    baseline = metrics["tfidf_baseline"]
    print(f"test accuracy {metrics['test_accuracy']:.4f}  macro-F1 {metrics['test_macro_f1']:.4f}  "
          f"(TF-IDF+LR {baseline['accuracy']:.4f})  -> {out}")
