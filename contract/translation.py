"""Translation decoding rules, torch-free: length limits, the greedy pick and one beam-search step.

Training (``training/seq2seq.py``), the reference runtime (``evaluate/``) and the server all decode
with these, so a translation is the same wherever it is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PER_SOURCE_TOKEN = 2  # the default output allowance: 2 tokens per source token …
EXTRA_TOKENS = 10  # … plus 10


@dataclass(frozen=True)
class OutputLength:
    """A source is cut to ``max_length`` tokens; its output gets at most
    ``min(per_source_token × source + extra, max_length)`` tokens, EOS included (the last is forced to EOS)."""

    per_source_token: int = PER_SOURCE_TOKEN
    extra: int = EXTRA_TOKENS
    max_length: int = 120

    def limit(self, source_lengths: Any, cap: int | None = None) -> Any:
        """The output limit of each source length (an int, a numpy array or a torch tensor); ``cap``
        lowers ``max_length`` (a request's own maximum)."""
        most = self.max_length if cap is None else cap
        limits = source_lengths * self.per_source_token + self.extra
        return min(limits, most) if isinstance(limits, int) else limits.clip(max=most)

    def source(self, pieces: list[int], suffix: tuple[int, ...] | list[int]) -> list[int]:
        """The encoder's ids: the pieces and the suffix (EOS), cut to ``max_length``."""
        return [*pieces, *suffix][: self.max_length]


def greedy_tokens(log_probs: np.ndarray, steps: np.ndarray, limits: np.ndarray, eos: int) -> np.ndarray:
    """Each row's most likely token, or EOS at its last allowed step (``steps`` taken before this one)."""
    return np.where(steps + 1 < limits, log_probs.argmax(-1), eos)


def length_normalized(scores: Any, lengths: Any, penalty: float) -> Any:
    """The beam ranking: ``log p / ((5 + length) / 6) ** penalty`` (GNMT's length penalty)."""
    return scores / ((5.0 + lengths) / 6.0) ** penalty


class Beam:
    """The hypotheses of one beam search over ``width`` rows, as in ``training/seq2seq.beam_search``.

    A finished hypothesis stays in its row with a frozen score (it may only extend with EOS at no
    cost), so ranking alive and finished ones is one sort per step.
    """

    def __init__(self, width: int, eos: int, penalty: float) -> None:
        self.width, self.eos, self.penalty = width, eos, penalty
        self.scores = np.full(width, -np.inf)
        self.scores[0] = 0.0  # all rows start identical: expand only the first
        self.lengths = np.zeros(width)
        self.finished = np.zeros(width, dtype=bool)

    def advance(self, log_probs: np.ndarray, at_limit: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step over ``log_probs [width, V]``: the rows that survive (``origin``), their new tokens and
        those tokens' log-probabilities; ``at_limit``: the last allowed step, where only EOS may follow."""
        log_probs = log_probs.astype(np.float64)
        only_eos = np.full_like(log_probs, -np.inf)
        only_eos[:, self.eos] = 0.0
        if at_limit:
            log_probs = log_probs[:, self.eos : self.eos + 1] + only_eos
        log_probs = np.where(self.finished[:, None], only_eos, log_probs)
        candidates = self.scores[:, None] + log_probs
        lengths = np.where(self.finished, self.lengths, self.lengths + 1)
        ranked = length_normalized(candidates, lengths[:, None], self.penalty)
        flat = np.argsort(-ranked.ravel(), kind="stable")[: self.width]
        origin, token = np.divmod(flat, log_probs.shape[1])
        self.scores, self.lengths = candidates.ravel()[flat], lengths[origin]
        self.finished = self.finished[origin] | (token == self.eos)
        return origin, token, log_probs[origin, token]

    @property
    def done(self) -> bool:
        return bool(self.finished.all())
