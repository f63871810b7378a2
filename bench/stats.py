"""One measured run (token arrival times per stream) and the medians over repeats."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np


@dataclass
class Run:
    """Arrival times (seconds after the run started) of every emitted token, one list per stream.

    A stream's first arrival is its time to first token; the gaps between its arrivals are its
    inter-token latencies. A run's throughput is all tokens over the time until the last stream ended.
    """

    arrivals: list[list[float]]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(len(a) for a in self.arrivals)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def ttft(self) -> np.ndarray:
        return np.array([a[0] for a in self.arrivals if a])

    def itl(self) -> np.ndarray:
        gaps = [np.diff(a) for a in self.arrivals if len(a) > 1]
        return np.concatenate(gaps) if gaps else np.array([])


@dataclass
class Summary:
    """Medians over repeats of each run's throughput and latency percentiles (seconds); NaN when undefined."""

    repeats: int
    tokens: int
    tokens_per_s: float
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarize(runs: list[Run]) -> Summary:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    return Summary(
        repeats=len(runs),
        tokens=runs[0].tokens,
        tokens_per_s=median([r.tokens_per_s for r in runs]),
        ttft_p50=median([_percentile(r.ttft(), 50) for r in runs]),
        ttft_p99=median([_percentile(r.ttft(), 99) for r in runs]),
        itl_p50=median([_percentile(r.itl(), 50) for r in runs]),
        itl_p99=median([_percentile(r.itl(), 99) for r in runs]),
    )
