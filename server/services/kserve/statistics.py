"""Per model version, what ``ModelStatistics`` reports: Triton's counts and cumulative durations.

perf_analyzer reads them before and after each measurement window; without ``-x`` it finds the
model version whose queue count grew. A request's time is split where the servicer sees it:
``compute_input`` decoding its tensors, ``queue`` waiting for the requests before it in its sequence,
``compute_infer`` the task adapter and the engine (their own batching queue included, see
``seqserve_queue_wait_seconds``), ``compute_output`` encoding its responses.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from protos.inference import kserve_pb2 as pb
from server.repository import Served

PARTS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Timing:
    """Where one request's time went, in ``time.perf_counter_ns()`` units."""

    arrived: int = field(default_factory=time.perf_counter_ns)
    decoded: int = 0  # its tensors are decoded
    started: int = 0  # its turn came: the adapter is called
    output_ns: int = 0  # spent encoding responses


@dataclass
class Totals:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    last_ms: int = 0

    def add(self, part: str, ns: int) -> None:
        self.counts[part] += 1
        self.ns[part] += max(ns, 0)


class Statistics:
    def __init__(self) -> None:
        self.models: dict[tuple[str, int], Totals] = defaultdict(Totals)

    @contextmanager
    def request(self, served: Served, timing: Timing) -> Iterator[None]:
        """Record the request whose work the block does, as a success unless it raises."""
        ok = False
        try:
            yield
            ok = True
        finally:
            end = time.perf_counter_ns()
            totals = self.models[(served.model.name, served.model.version)]
            totals.add("success" if ok else "fail", end - timing.arrived)
            if ok:
                totals.add("compute_input", timing.decoded - timing.arrived)
                totals.add("queue", timing.started - timing.decoded)
                totals.add("compute_infer", end - timing.started - timing.output_ns)
                totals.add("compute_output", timing.output_ns)
            totals.last_ms = time.time_ns() // 1_000_000

    def message(self, served: Served) -> pb.ModelStatistics:
        totals = self.models[(served.model.name, served.model.version)]
        durations = {part: pb.StatisticDuration(count=totals.counts[part], ns=totals.ns[part]) for part in PARTS}
        return pb.ModelStatistics(
            name=served.model.name, version=str(served.model.version), last_inference=totals.last_ms,
            inference_count=totals.counts["success"], execution_count=totals.counts["success"],
            inference_stats=pb.InferStatistics(**durations))
