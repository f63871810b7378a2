"""One measured run (token arrival times per stream) and the medians over repeats."""

from __future__ import annotations

import math
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
    cpu_s: float = math.nan  # CPU time of this process (the client or the loop) during the run
    server_cpu_s: float = 0.0  # CPU time of the server process during the run
    per_token: bool = True  # False: every token of a stream arrives in one message (no inter-token latency)
    batch: float = math.nan  # the server's mean rows per step of the step graph
    step_s: float = math.nan  # the server's mean time per step of the step graph (gather, run, scatter)

    @property
    def tokens(self) -> int:
        return sum(len(a) for a in self.arrivals)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def ttft(self) -> np.ndarray:
        return np.array([a[0] for a in self.arrivals if a])

    def itl(self) -> np.ndarray:
        if not self.per_token:
            return np.array([])
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
    cpu_us_per_token: float  # client (or loop) plus server
    server_cpu_share: float  # the server's part of that CPU time
    batch: float  # mean rows per step of the step graph
    step_ms: float  # mean time per step of the step graph
    runs_tokens_per_s: list[float]  # every repeat's throughput, in the order run: the spread

    @property
    def spread(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the repeats' throughput."""
        return quartiles(self.runs_tokens_per_s)


def quartiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 25)), float(np.percentile(values, 75))


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarize(runs: list[Run]) -> Summary:
    median = statistics.median
    return Summary(
        repeats=len(runs),
        tokens=runs[0].tokens,
        tokens_per_s=median([r.tokens_per_s for r in runs]),
        ttft_p50=median([_percentile(r.ttft(), 50) for r in runs]),
        ttft_p99=median([_percentile(r.ttft(), 99) for r in runs]),
        itl_p50=median([_percentile(r.itl(), 50) for r in runs]),
        itl_p99=median([_percentile(r.itl(), 99) for r in runs]),
        cpu_us_per_token=median([(r.cpu_s + r.server_cpu_s) / r.tokens * 1e6 for r in runs]),
        server_cpu_share=median([r.server_cpu_s / (r.cpu_s + r.server_cpu_s) for r in runs]),
        batch=median([r.batch for r in runs]),
        step_ms=median([r.step_s * 1000 for r in runs]),
        runs_tokens_per_s=[r.tokens_per_s for r in runs],
    )
