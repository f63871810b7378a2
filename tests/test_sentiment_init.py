"""Reading a step-graph sentiment version back: the course cells' weights map back to ``torch.nn``'s layout."""

from pathlib import Path

import numpy as np
import pytest
import torch

from contract.repository import load_model
from evaluate.sentiment import sentiment_ids, sentiment_running
from training.cells import Recurrent
from training.sentiment import Config, SentimentModel
from training.sentiment_init import load_version, rnn_weights

ROOT = Path(__file__).resolve().parents[1]
VERSION_1 = ROOT / "models" / "sentiment" / "1"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_course_cells_map_back_to_torch(cell: str) -> None:
    torch.manual_seed(0)
    cfg = Config(cell=cell, embed=6, hidden=5, layers=2, dropout=0.0)
    original = SentimentModel(11, cfg).eval()
    cells = Recurrent(cell, cfg.embed, cfg.hidden, cfg.layers)
    cells.load_torch(original.rnn)
    weights = {f"recurrent.{k}": v.numpy() for k, v in cells.state_dict().items()}
    rebuilt = SentimentModel(11, cfg).eval()
    rebuilt.load_state_dict(original.state_dict())
    rebuilt.load_state_dict({k: torch.tensor(v) for k, v in rnn_weights(weights, cfg).items()}, strict=False)
    ids = torch.randint(1, 11, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.logits_per_token(ids), original.logits_per_token(ids), atol=1e-5, rtol=0)
    assert not torch.equal(rebuilt.rnn.bias_hh_l0, original.rnn.bias_hh_l0)  # the biases really were re-split


@pytest.mark.skipif(not VERSION_1.is_dir(), reason="needs the shipped sentiment version 1")
def test_version_1_reads_back_as_the_same_function() -> None:
    model, _ = load_version(VERSION_1)
    v1 = load_model(VERSION_1)
    texts = ["A wonderful, moving film.", "Dull and far too long, though the cast tries hard."]
    running = sentiment_running(v1, texts)
    with torch.no_grad():
        for ids, expected in zip(sentiment_ids(v1, texts), running, strict=True):
            got = torch.softmax(model.logits_per_token(torch.tensor([ids])), -1)[0].numpy()
            np.testing.assert_allclose(got, expected, atol=1e-5)
