"""One measured run (token arrival times per stream) and the medians over repeats."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

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
    counted: int | None = None  # sustained mode: the tokens that arrived within the measured window
    requests: int = 0  # sustained mode: the requests that ended within the measured window

    @property
    def tokens(self) -> int:
        return sum(len(a) for a in self.arrivals) if self.counted is None else self.counted

    @property
    def serving_cpu_s(self) -> float:
        """The CPU time of whatever served the tokens: the server process, or the in-process loop itself."""
        return self.server_cpu_s if self.server_cpu_s > 0 else self.cpu_s

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


@dataclass(frozen=True)
class Sustained:
    """The sustained mode: ``clients`` closed-loop clients, measured for ``seconds`` after ``warmup`` seconds."""

    clients: int
    seconds: float
    warmup: float


@dataclass
class Request:
    """One request of a closed-loop client: when it started, when each token arrived, when it ended
    (``perf_counter`` seconds)."""

    start: float
    arrivals: list[float] = field(default_factory=list)
    end: float = math.nan


def windowed(requests: list[Request], start: float, end: float, cpu_s: float, server_cpu_s: float = 0.0,
             batch: float = math.nan, step_s: float = math.nan) -> Run:
    """A closed-loop run measured over ``[start, end]``: the tokens and ended requests within it; TTFT and
    inter-token gaps of the requests that started within it (their arrivals relative to their own start)."""
    inside = [r for r in requests if start <= r.start <= end]
    return Run(
        arrivals=[[a - r.start for a in r.arrivals if a <= end] for r in inside],
        seconds=end - start,
        cpu_s=cpu_s,
        server_cpu_s=server_cpu_s,
        batch=batch,
        step_s=step_s,
        counted=sum(start <= a <= end for r in requests for a in r.arrivals),
        requests=sum(start <= r.end <= end for r in requests),
    )


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
    ttft_p90: float = math.nan
    itl_p90: float = math.nan
    requests_per_s: float = math.nan  # sustained mode: requests ended per second
    serving_us_per_token: float = math.nan  # CPU of the server process alone (or of the in-process loop) per token
    runs_serving_us_per_token: list[float] = field(default_factory=list)  # every repeat's, for the spread

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
    serving = [r.serving_cpu_s / r.tokens * 1e6 for r in runs]
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
        ttft_p90=median([_percentile(r.ttft(), 90) for r in runs]),
        itl_p90=median([_percentile(r.itl(), 90) for r in runs]),
        requests_per_s=median([r.requests / r.seconds for r in runs]),
        serving_us_per_token=median(serving),
        runs_serving_us_per_token=serving,
    )
