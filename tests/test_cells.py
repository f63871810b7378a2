"""The cells written from the course equations match torch.nn with copied weights."""

import pytest
import torch
from torch import nn

from training.cells import CELLS, LSTMCell, Recurrent

TORCH_CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_matches_torch(kind: str) -> None:
    torch.manual_seed(0)
    reference = TORCH_CELLS[kind](5, 7).double()
    cell = CELLS[kind](5, 7).double()
    cell.load_torch(reference)
    x, h, c = torch.randn(3, 5).double(), torch.randn(3, 7).double(), torch.randn(3, 7).double()
    for _ in range(4):  # a few steps, so errors would compound
        if kind == "lstm":
            expected = reference(x, (h, c))
            h, c = cell(x, (h, c))
            torch.testing.assert_close((h, c), expected, atol=1e-6, rtol=0)
        else:
            expected = reference(x, h)
            (h,) = cell(x, (h,))
            torch.testing.assert_close(h, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_stacked_layer_matches_torch(kind: str) -> None:
    torch.manual_seed(1)
    reference = TORCH_LAYERS[kind](4, 6, num_layers=3, batch_first=True).double()
    layer = Recurrent(kind, 4, 6, num_layers=3).double()
    layer.load_torch(reference)
    x = torch.randn(2, 9, 4).double()
    state = tuple(torch.randn(3, 2, 6).double() for _ in range(2 if kind == "lstm" else 1))
    expected_out, expected_state = reference(x, state if kind == "lstm" else state[0])
    out, final = layer(x, state)
    torch.testing.assert_close(out, expected_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(final, expected_state if kind == "lstm" else (expected_state,), atol=1e-6, rtol=0)


def test_dropout_only_between_layers() -> None:
    torch.manual_seed(2)
    layer = Recurrent("gru", 3, 4, num_layers=2, dropout=0.9).train()
    x = torch.randn(2, 5, 3)
    single = Recurrent("gru", 3, 4, num_layers=1, dropout=0.9).train()
    single.layers[0].load_state_dict(layer.layers[0].state_dict())
    # With one layer there is nothing to drop: training mode changes nothing.
    torch.testing.assert_close(single(x)[0], single.eval()(x)[0])
    # With two, dropout between the layers makes training mode differ from eval.
    assert not torch.allclose(layer(x)[0], layer.eval()(x)[0])


@pytest.mark.parametrize(("x", "h"), [(10, 20), (3, 64), (128, 256)])
def test_lstm_parameter_count(x: int, h: int) -> None:
    assert sum(p.numel() for p in LSTMCell(x, h).parameters()) == 4 * ((x + h) * h + h)


def test_unknown_cell_is_refused() -> None:
    with pytest.raises(ValueError, match="cell must be one of"):
        Recurrent("transformer", 3, 4)
