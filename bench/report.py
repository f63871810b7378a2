"""Markdown tables of the summaries and of the server's ratios to each baseline."""

from __future__ import annotations

import math

from bench.stats import Summary

BASELINES = ["(a) ort", "(b) server max_batch=1", "(c) torch"]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def summary_table(results: dict[str, dict[int, Summary]]) -> str:
    """One row per ``N`` and system. ``rows/step`` and ``ms/step`` are those of the step graph
    (for the server: its scheduler's batches, gather and scatter included)."""
    lines = [
        "| N | system | repeats | tokens | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| CPU µs/token (server share) | rows/step | ms/step |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted(next(iter(results.values()))):
        for name, by_n in results.items():
            s = by_n[n]
            share = f" ({s.server_cpu_share:.0%})" if s.server_cpu_share > 0 else ""
            lines.append(
                f"| {n} | {name} | {s.repeats} | {s.tokens} | {s.tokens_per_s:.0f} | {_ms(s.ttft_p50)} | "
                f"{_ms(s.ttft_p99)} | {_ms(s.itl_p50)} | {_ms(s.itl_p99)} | {s.cpu_us_per_token:.0f}{share} | "
                f"{s.batch:.1f} | {s.step_ms:.2f} |"
            )
    return "\n".join(lines)


def ratio_table(results: dict[str, dict[int, Summary]]) -> str:
    """Each server system ÷ each baseline: above 1 is better for throughput, below 1 is better for latencies."""
    lines = [
        "| N | system | ÷ | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    servers = [name for name in results if name not in BASELINES]
    for n in sorted(results["server"]):
        for system in servers:
            for name in [b for b in BASELINES if b in results]:
                s, b = results[system][n], results[name][n]
                cells = [s.tokens_per_s / b.tokens_per_s] + [
                    getattr(s, f) / getattr(b, f) if getattr(s, f) > 0 and getattr(b, f) > 0 else math.nan
                    for f in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99")
                ]
                lines.append(f"| {n} | {system} | {name} | "
                             + " | ".join("-" if math.isnan(c) else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)
