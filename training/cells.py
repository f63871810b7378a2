"""The recurrent cells of the course notes, written from their equations.

Each cell maps ``(x_t, state) -> state`` for one time step; ``Recurrent`` unrolls a cell
over a sequence and stacks layers. The tests check every cell against ``torch.nn`` with
copied weights, so models may use ``torch.nn.LSTM``/``GRU`` for speed and still claim
these equations.

State is always a tuple of tensors: ``(h,)`` for the RNN and GRU, ``(h, c)`` for the LSTM.
"""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


class RNNCell(nn.Module):
    """``h_t = tanh(W [h_{t-1}, x_t] + b)``."""

    state_size = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.linear = nn.Linear(hidden_size + input_size, hidden_size)

    def forward(self, x: torch.Tensor, state: State) -> State:
        (h,) = state
        return (torch.tanh(self.linear(torch.cat([h, x], dim=-1))),)

    @torch.no_grad()
    def load_torch(self, ref: nn.RNNCell | nn.RNN, layer: int = 0) -> None:
        w_ih, w_hh, b_ih, b_hh = _torch_params(ref, layer)
        self.linear.weight.copy_(torch.cat([w_hh, w_ih], dim=1))
        self.linear.bias.copy_(b_ih + b_hh)


class LSTMCell(nn.Module):
    """``f,i,o = σ(W[h,x]+b)``; ``c~ = tanh(W_c[h,x]+b_c)``; ``c = f⊙c + i⊙c~``; ``h = o⊙tanh(c)``.

    The four affine maps share one matrix, so the parameter count is ``4((x+h)h + h)``.
    """

    state_size = 2

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.linear = nn.Linear(hidden_size + input_size, 4 * hidden_size)  # rows: f, i, o, c~

    def forward(self, x: torch.Tensor, state: State) -> State:
        h, c = state
        f, i, o, c_tilde = self.linear(torch.cat([h, x], dim=-1)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(c_tilde)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    @torch.no_grad()
    def load_torch(self, ref: nn.LSTMCell | nn.LSTM, layer: int = 0) -> None:
        w_ih, w_hh, b_ih, b_hh = _torch_params(ref, layer)
        # torch orders the gate rows i, f, g(=c~), o; ours are f, i, o, c~.
        order = [1, 0, 3, 2]

        def reorder(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t.chunk(4, dim=0)[k] for k in order], dim=0)

        self.linear.weight.copy_(torch.cat([reorder(w_hh), reorder(w_ih)], dim=1))
        self.linear.bias.copy_(reorder(b_ih + b_hh))


class GRUCell(nn.Module):
    """Update gate ``z`` and reset gate ``r``: ``z,r = σ(W[h,x]+b)``;
    ``n = tanh(W_x x + b_x + r⊙(W_h h + b_h))``; ``h = (1-z)⊙n + z⊙h``.

    The reset gate is applied after the hidden projection (the cuDNN form that
    ``torch.nn.GRU`` uses), so the candidate keeps separate input and hidden biases.
    """

    state_size = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.gates = nn.Linear(hidden_size + input_size, 2 * hidden_size)  # rows: z, r
        self.candidate_x = nn.Linear(input_size, hidden_size)
        self.candidate_h = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, state: State) -> State:
        (h,) = state
        z, r = torch.sigmoid(self.gates(torch.cat([h, x], dim=-1))).chunk(2, dim=-1)
        n = torch.tanh(self.candidate_x(x) + r * self.candidate_h(h))
        return ((1 - z) * n + z * h,)

    @torch.no_grad()
    def load_torch(self, ref: nn.GRUCell | nn.GRU, layer: int = 0) -> None:
        w_ih, w_hh, b_ih, b_hh = _torch_params(ref, layer)
        # torch orders the rows r, z, n.
        (wi_r, wi_z, wi_n), (wh_r, wh_z, wh_n) = w_ih.chunk(3), w_hh.chunk(3)
        (bi_r, bi_z, bi_n), (bh_r, bh_z, bh_n) = b_ih.chunk(3), b_hh.chunk(3)
        self.gates.weight.copy_(torch.cat([torch.cat([wh_z, wi_z], 1), torch.cat([wh_r, wi_r], 1)], 0))
        self.gates.bias.copy_(torch.cat([bi_z + bh_z, bi_r + bh_r]))
        self.candidate_x.weight.copy_(wi_n)
        self.candidate_x.bias.copy_(bi_n)
        self.candidate_h.weight.copy_(wh_n)
        self.candidate_h.bias.copy_(bh_n)


CELLS: dict[str, type[RNNCell | LSTMCell | GRUCell]] = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


class Recurrent(nn.Module):
    """Unrolls ``num_layers`` stacked cells over ``x: [batch, time, features]``.

    Dropout is applied between layers (not after the last), as in ``torch.nn.LSTM``.
    Returns the top layer's outputs ``[batch, time, hidden]`` and the final state of
    every layer, each tensor shaped ``[num_layers, batch, hidden]`` like ``torch.nn``.
    """

    def __init__(
        self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.cell_type, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(CELLS[cell](size, hidden_size) for size in sizes)
        self.dropout = nn.Dropout(dropout)

    def initial_state(self, batch: int, like: torch.Tensor) -> State:
        zeros = like.new_zeros(self.num_layers, batch, self.hidden_size)
        return tuple(zeros.clone() for _ in range(self.layers[0].state_size))

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[0], x)
        finals: list[State] = []
        for index, cell in enumerate(self.layers):
            if index > 0:
                x = self.dropout(x)
            layer_state = tuple(s[index] for s in state)
            outputs = []
            for t in range(x.shape[1]):
                layer_state = cell(x[:, t], layer_state)
                outputs.append(layer_state[0])
            x = torch.stack(outputs, dim=1)
            finals.append(layer_state)
        return x, tuple(torch.stack(parts) for parts in zip(*finals, strict=True))

    @torch.no_grad()
    def load_torch(self, ref: nn.RNN | nn.LSTM | nn.GRU) -> None:
        for index, cell in enumerate(self.layers):
            cell.load_torch(ref, index)


def _torch_params(ref: nn.Module, layer: int) -> tuple[torch.Tensor, ...]:
    """``(w_ih, w_hh, b_ih, b_hh)`` of a ``torch.nn`` cell, or of one layer of a stacked module."""
    suffix = "" if isinstance(ref, nn.RNNCellBase) else f"_l{layer}"
    return tuple(getattr(ref, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
