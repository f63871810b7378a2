"""The global quantile forecaster and its step function.

``step(value [B, 1], features [B, F], state) -> (quantiles [B, Q], new_state)`` is the graph
the server will run once per month: ``state`` is ``(h,)`` for a GRU and ``(h, c)`` for an
LSTM, each ``[layers, B, hidden]`` (``[members * layers, B, hidden]`` for an ``Ensemble``),
zeros at the start of a series. ``forward`` runs the same module over a whole teacher-forced
sequence; ``step`` is ``forward`` with one time step, and the tests check that a loop of
steps equals one ``forward``.

The outputs are the quantiles ``QUANTILES`` of the next scaled value, ordered by
construction: the head predicts the median and positive (softplus) gaps outward from it.
With ``skip_lag`` (one of ``lags``; the CLI uses 12) the head predicts the change
from that lagged input, so an untrained model starts from the seasonal naive forecast.

``HoltWintersForecaster`` is the ES-RNN hybrid (Smyl, M4): a level and twelve seasonal terms per
series, updated by Holt–Winters equations in the step itself and carried as two more states;
the LSTM reads and forecasts the deseasonalised, level-normalised signal (see its docstring).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from contract.forecast import prefix_length
from training.forecast_data import SEASON, feature_size

QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MEDIAN = QUANTILES.index(0.5)
RNN_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU}

State = tuple[torch.Tensor, ...]


class StepModel(nn.Module):
    """Anything with ``forward(values [B, T, 1], features [B, T, F], state)`` gets the one-step function."""

    lags: tuple[int, ...]
    state_names: tuple[str, ...]

    def initial_state(self, batch: int) -> State:
        raise NotImplementedError

    def step(self, value: torch.Tensor, features: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One month: ``value [B, 1]``, ``features [B, F]`` -> quantiles ``[B, Q]``, new state."""
        quantiles, new_state = self(value[:, None], features[:, None], state)
        return quantiles[:, 0], new_state


class Forecaster(StepModel):
    extra_inputs = 0  # RNN inputs besides the value and the features

    def __init__(
        self, cell: str, hidden: int, layers: int, dropout: float, lags: tuple[int, ...], skip_lag: int = 0
    ) -> None:
        super().__init__()
        if skip_lag and skip_lag not in lags:
            raise ValueError(f"skip_lag {skip_lag} must be one of the lags {lags}")
        self.cell, self.lags = cell, tuple(lags)
        self.state_names = ("h", "c") if cell == "lstm" else ("h",)
        # Column of the features that holds z[t - skip_lag], or None.
        self.skip_column = SEASON + self.lags.index(skip_lag) if skip_lag else None
        self.rnn = RNN_MODULES[cell](
            1 + feature_size(self.lags) + self.extra_inputs, hidden, layers, batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden, len(QUANTILES))

    def initial_state(self, batch: int) -> State:
        zeros = torch.zeros(self.rnn.num_layers, batch, self.rnn.hidden_size)
        return (zeros, zeros.clone()) if self.cell == "lstm" else (zeros,)

    def forward(
        self, values: torch.Tensor, features: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """``values [B, T, 1]``, ``features [B, T, F]`` -> quantiles ``[B, T, Q]`` and the final state."""
        if state is None:
            state = self.initial_state(values.shape[0])
        outputs, new_state = self.rnn(torch.cat([values, features], dim=-1), state if self.cell == "lstm" else state[0])
        new_state = tuple(new_state) if self.cell == "lstm" else (new_state,)
        quantiles = ordered_quantiles(self.head(outputs))
        if self.skip_column is not None:
            quantiles = quantiles + features[..., self.skip_column : self.skip_column + 1]
        return quantiles, new_state


class HoltWintersForecaster(Forecaster):
    """ES-RNN: Holt–Winters level and seasonality inside the step, the RNN on what they leave.

    In model units (``z``, log of the scaled series) the multiplicative Holt–Winters model is
    additive. Three more states per series, zeros at the start like the RNN's: ``level [1, B, 1]``,
    ``season [1, B, 12]`` (one term per calendar month) and ``count [1, B, 1]`` (values read). Each
    step first reads the observed (or fed-back) ``v = z[t-1]`` of month ``m-1``, with global
    smoothing weights ``alpha`` and ``gamma`` (learned, in (0, 1)):

        a = max(alpha, 1 / (count + 1));  g = 1 while count < 12, else gamma
        level  <- level + a (v - season[m-1] - level)
        season[m-1] <- season[m-1] + g (v - level - season[m-1])
        count  <- count + 1

    so the first year initialises them (the level is the running mean, each month's term its
    first deviation from it), as the classical start of Holt–Winters does, and then they smooth.
    The RNN reads the deseasonalised, level-normalised ``v - level - season[m-1]``, the lags
    relative to the level, ``season[m]`` and the month; it forecasts the quantiles of
    ``z[t] - level - season[m]``. The median's offset is bounded (``bound · tanh``), so a fed-back
    median moves the level by at most ``alpha · bound`` a month: no runaway. There is no trend
    term: the RNN supplies the growth, the level follows it.
    """

    extra_inputs = 1  # season[m]

    def __init__(self, *args: object, bound: float = 0.5, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.state_names = (*self.state_names, "level", "season", "count")
        self.skip_column = None
        self.bound = bound
        self.smoothing = nn.Parameter(torch.logit(torch.tensor([0.3, 0.3])))  # alpha, gamma

    def initial_state(self, batch: int) -> State:
        zeros = torch.zeros(1, batch, 1)
        return (*super().initial_state(batch), zeros, torch.zeros(1, batch, SEASON), zeros.clone())

    def forward(
        self, values: torch.Tensor, features: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(values.shape[0])
        *rnn_state, level, season, count = state
        level, season, count = level[0], season[0], count[0]
        alpha, gamma = torch.sigmoid(self.smoothing).unbind()
        month = features[..., :SEASON]
        previous = torch.cat([month[..., 1:], month[..., :1]], dim=-1)  # one-hot month of t - 1
        levels, seasons, signals = [], [], []
        for t in range(values.shape[1]):
            value = values[:, t]
            old = (season * previous[:, t]).sum(-1, keepdim=True)
            level = level + torch.maximum(alpha, 1 / (count + 1)) * (value - old - level)
            new = old + torch.where(count < SEASON, 1.0, gamma) * (value - level - old)
            season = season + previous[:, t] * (new - old)
            count = count + 1
            levels.append(level)
            seasons.append((season * month[:, t]).sum(-1, keepdim=True))
            signals.append(value - level - new)
        level_t, season_t = torch.stack(levels, 1), torch.stack(seasons, 1)
        inputs = torch.cat([torch.stack(signals, 1), month, features[..., SEASON:] - level_t, season_t], dim=-1)
        outputs, new_rnn = self.rnn(inputs, tuple(rnn_state) if self.cell == "lstm" else rnn_state[0])
        new_rnn = tuple(new_rnn) if self.cell == "lstm" else (new_rnn,)
        raw = self.head(outputs)
        median = self.bound * torch.tanh(raw[..., MEDIAN : MEDIAN + 1] / self.bound)
        raw = torch.cat([raw[..., :MEDIAN], median, raw[..., MEDIAN + 1 :]], dim=-1)
        quantiles = ordered_quantiles(raw) + level_t + season_t
        return quantiles, (*new_rnn, level[None], season[None], count[None])


class Ensemble(StepModel):
    """Members trained with different seeds, averaged quantile by quantile (which keeps them ordered).

    Each state is the members' states concatenated on its first axis (``[members * layers, B,
    hidden]`` for the RNN's, ``[members, B, ·]`` for the Holt–Winters ones), so the step signature
    is the same as one member's.
    """

    def __init__(self, members: list[Forecaster]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.lags, self.state_names = members[0].lags, members[0].state_names
        # rows of each state per member (layers for the RNN's, 1 for the Holt–Winters states)
        self.state_rows = tuple(s.shape[0] for s in members[0].initial_state(1))

    def initial_state(self, batch: int) -> State:
        states = [member.initial_state(batch) for member in self.members]
        return tuple(torch.cat(parts) for parts in zip(*states, strict=True))

    def forward(
        self, values: torch.Tensor, features: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(values.shape[0])
        outputs, states = [], []
        for index, member in enumerate(self.members):
            own = tuple(s[index * n : (index + 1) * n] for s, n in zip(state, self.state_rows, strict=True))
            quantiles, new_state = member(values, features, own)
            outputs.append(quantiles)
            states.append(new_state)
        return torch.stack(outputs).mean(0), tuple(torch.cat(parts) for parts in zip(*states, strict=True))


def ordered_quantiles(raw: torch.Tensor) -> torch.Tensor:
    """``raw [..., Q]`` -> non-decreasing quantiles: ``raw[MEDIAN]`` plus cumulative softplus gaps either side."""
    median = raw[..., MEDIAN : MEDIAN + 1]
    above = median + F.softplus(raw[..., MEDIAN + 1 :]).cumsum(-1)
    below = median - F.softplus(raw[..., :MEDIAN]).flip(-1).cumsum(-1).flip(-1)
    return torch.cat([below, median, above], dim=-1)


def step_inputs(
    columns: list[torch.Tensor], months0: torch.Tensor, target: int, lags: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step inputs for window position ``target`` from the scaled window values ``columns`` (each ``[B]``)."""
    month = F.one_hot((months0 + target) % SEASON, SEASON).float()
    lagged = [columns[target - lag][:, None] for lag in lags]
    return columns[target - 1][:, None], torch.cat([month, *lagged], dim=-1)


def sequence_inputs(
    scaled: torch.Tensor, months0: torch.Tensor, targets: range, lags: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``step_inputs`` for every position in ``targets`` at once: ``[B, T, 1]`` and ``[B, T, F]``."""
    index = torch.arange(targets.start, targets.stop)
    month = F.one_hot((months0[:, None] + index[None]) % SEASON, SEASON).float()
    lagged = [scaled[:, index - lag, None] for lag in lags]
    return scaled[:, index - 1, None], torch.cat([month, *lagged], dim=-1).float()


def rollout(
    model: StepModel, scaled: torch.Tensor, months0: torch.Tensor, context: int, horizon: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a window teacher-forced, then forecast ``horizon`` months by feeding medians back.

    ``scaled [B, prefix + context + horizon]`` holds scaled values (the horizon part is never
    read); ``months0 [B]`` is the month of its first value. Returns the one-step quantiles of
    the context ``[B, context - 1, Q]`` and the forecast quantiles ``[B, horizon, Q]``.
    """
    origin = prefix_length(model.lags) + context
    observed = range(prefix_length(model.lags) + 1, origin)
    if len(observed):
        context_quantiles, state = model(*sequence_inputs(scaled, months0, observed, model.lags))
    else:
        context_quantiles, state = scaled.new_zeros(len(scaled), 0, len(QUANTILES)), model.initial_state(len(scaled))
    columns = list(scaled[:, :origin].unbind(1))
    forecasts = []
    for target in range(origin, origin + horizon):
        quantiles, state = model.step(*step_inputs(columns, months0, target, model.lags), state)
        forecasts.append(quantiles)
        columns.append(quantiles[:, MEDIAN])
    return context_quantiles, torch.stack(forecasts, dim=1)


def pinball_loss(quantiles: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pinball loss of ``quantiles [B, T, Q]`` against ``target [B, T]``, optionally weighted per row."""
    levels = quantiles.new_tensor(QUANTILES)
    error = target[..., None] - quantiles
    per_row = torch.maximum(levels * error, (levels - 1) * error).mean(dim=(1, 2))
    return per_row.mean() if weight is None else (weight * per_row).sum() / weight.sum()
