"""Sentiment: the real loader, the recorded split, the tokenizer, the model and the CLI."""

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from training import sentiment
from training.sentiment import Config, SentimentModel, encode_batch
from training.sentiment_data import Vocabulary, load_snippets, long_texts, split_snippets


def corpus(data_dir: Path) -> Path:
    return data_dir / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2"


def test_loader_parses_the_real_file(data_dir: Path) -> None:
    texts, labels = load_snippets(corpus(data_dir))
    assert 12_500 < len(texts) < 13_000
    assert len(set(texts)) == len(texts)
    assert set(labels.tolist()) == {0, 1}
    assert 0.55 < labels.mean() < 0.60  # about 7.4k fresh of 12.75k


def test_split_is_deterministic_and_recorded(data_dir: Path) -> None:
    first, second = split_snippets(corpus(data_dir)), split_snippets(corpus(data_dir))
    for name in ("train", "validation", "test"):
        assert first[name].texts == second[name].texts
    sizes = [len(first[name].texts) for name in ("train", "validation", "test")]
    assert abs(sizes[1] - sizes[2]) <= 1 and sizes[0] > 7 * sizes[1]
    assert not set(first["train"].texts) & set(first["test"].texts)
    record = json.loads((corpus(data_dir).parent / "split_seed0.json").read_text())
    assert len(record["test"]) == sizes[2]


def test_vocabulary_round_trip_and_unknown_words(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["A fine film.", "a fine mess", "fine"], min_count=2)
    assert vocab.encode("A FINE zebra") == [vocab.index["a"], vocab.index["fine"], vocab.index["<unk>"]]
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").words == vocab.words


def test_padding_never_changes_a_text_probability() -> None:
    torch.manual_seed(0)
    cfg = Config(embed=8, hidden=12, layers=2, dropout=0.0)
    model = SentimentModel(50, cfg).eval()
    ids = torch.randint(2, 50, (3, 7))
    ids[0, 4:] = 0
    lengths = torch.tensor([4, 7, 7])
    alone = model(ids[:1, :4], lengths[:1])
    torch.testing.assert_close(model(ids, lengths)[:1], alone)


def test_tiny_model_overfits_64_real_examples(data_dir: Path) -> None:
    torch.manual_seed(0)
    train = split_snippets(corpus(data_dir))["train"]
    texts, labels = train.texts[:64], torch.from_numpy(train.labels[:64])
    cfg = Config(embed=32, hidden=32, dropout=0.0, min_count=1)
    vocab = Vocabulary.build(texts, min_count=1)
    model = SentimentModel(len(vocab), cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids, lengths = encode_batch(vocab, texts, cfg.max_tokens)
    for _ in range(150):
        loss = F.cross_entropy(model(ids, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = (model.eval()(ids, lengths).argmax(-1) == labels).float().mean().item()
    assert loss.item() < 0.05 and accuracy == 1.0


def test_cli_runs_one_short_epoch(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sentiment.main(["--epochs", "1", "--subset", "200", "--hidden", "16", "--embed", "16", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "dataset_sizes", "seed", "wall_seconds", "tfidf_baseline"):
        assert key in metrics
    assert metrics["dataset_sizes"] == {"train": 200, "validation": 200, "test": 200}
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (out / "curves.png").stat().st_size > 0
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    model = SentimentModel(len(Vocabulary.load(out / "vocab.json")), Config(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    assert np.isfinite(metrics["seconds_per_epoch"])


def test_final_logits_equal_the_running_logits_at_each_length() -> None:
    torch.manual_seed(3)
    model = SentimentModel(40, Config(embed=8, hidden=10, dropout=0.0)).eval()
    ids = torch.randint(2, 40, (4, 6))
    lengths = torch.tensor([6, 3, 1, 5])
    per_token = model.logits_per_token(ids)
    torch.testing.assert_close(model(ids, lengths), per_token[torch.arange(4), lengths - 1])


def test_long_texts_are_frozen_and_come_from_the_test_split_only(data_dir: Path) -> None:
    splits = split_snippets(corpus(data_dir))
    test = splits["test"]
    sets = long_texts(test)
    assert list(sets) == ["movie_1", "movie_2-4", "movie_5-7", "mixed_10", "mixed_30", "mixed_100", "mixed_400"]
    assert [len(s.texts) for s in sets.values()] == [264, 305, 35, 120, 120, 120, 120]
    label_of = dict(zip(test.texts, test.labels.tolist(), strict=True))
    train = set(splits["train"].texts)
    for name, split in sets.items():
        for text, label in zip(split.texts, split.labels.tolist(), strict=True):
            # every text is test snippets of its label, joined by spaces: greedily match them from the start
            rest, snippets = text, 0
            while rest:
                snippet = next(s for s in label_of if rest.startswith(s) and rest[len(s):len(s) + 1] in ("", " "))
                assert label_of[snippet] == label and snippet not in train
                rest, snippets = rest[len(snippet) + 1:], snippets + 1
            if name.startswith("mixed_"):
                assert snippets == int(name.removeprefix("mixed_"))
    movies = sets["movie_5-7"]
    assert all(len(set(m for m, t in zip(test.movies, test.texts, strict=True) if t in text)) == 1
               for text in movies.texts[:5])
    again = long_texts(split_snippets(corpus(data_dir))["test"])
    assert all(again[name].texts == sets[name].texts for name in sets)
    assert 40_000 < np.mean([len(text) for text in sets["mixed_400"].texts]) < 50_000  # review-length texts
