"""Markdown tables of the summaries and of the server's ratios to each baseline."""

from __future__ import annotations

import math
import statistics

from bench.stats import Summary, quartiles

BASELINES = ["(a) ort", "(b) server max_batch=1", "(c) torch"]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def summary_table(results: dict[str, dict[int, Summary]]) -> str:
    """One row per ``N`` and system. ``rows/step`` and ``ms/step`` are those of the step graph
    (for the server: its scheduler's batches, gather and scatter included)."""
    lines = [
        "| N | system | repeats | tokens | tokens/s | p25–p75 | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| CPU µs/token (server share) | rows/step | ms/step |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted(next(iter(results.values()))):
        for name, by_n in results.items():
            s = by_n[n]
            share = f" ({s.server_cpu_share:.0%})" if s.server_cpu_share > 0 else ""
            lines.append(
                f"| {n} | {name} | {s.repeats} | {s.tokens} | {s.tokens_per_s:.0f} | "
                f"{s.spread[0]:.0f}–{s.spread[1]:.0f} | {_ms(s.ttft_p50)} | "
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


def compare_table(results: dict[str, dict[int, Summary]], before: str) -> str:
    """``server`` (after) against ``before`` (the same server at another commit), measured alternately:
    after ÷ before (of the medians, and per round: the median and quartiles of the paired ratios,
    which cancel load that drifts between rounds), and each one ÷ (a) when (a) was measured alongside."""
    lines = [
        f"| N | tokens/s {before} | tokens/s server | after ÷ before | paired, p25–p75 | TTFT p50 | ITL p50 "
        f"| ITL p99 | {before} ÷ (a) | server ÷ (a) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(a: float, b: float) -> str:
        return "-" if math.isnan(a) or math.isnan(b) or b <= 0 else f"{a / b:.2f}"

    for n in sorted(results["server"]):
        after, old = results["server"][n], results[before][n]
        ort = results.get(BASELINES[0], {}).get(n)
        limits = [ratio(s.tokens_per_s, ort.tokens_per_s) if ort else "-" for s in (old, after)]
        paired = [a / b for a, b in zip(after.runs_tokens_per_s, old.runs_tokens_per_s, strict=True)]
        low, high = quartiles(paired)
        lines.append(f"| {n} | {old.tokens_per_s:.0f} | {after.tokens_per_s:.0f} | "
                     f"{ratio(after.tokens_per_s, old.tokens_per_s)} | {statistics.median(paired):.2f}, "
                     f"{low:.2f}–{high:.2f} | {ratio(after.ttft_p50, old.ttft_p50)} | "
                     f"{ratio(after.itl_p50, old.itl_p50)} | {ratio(after.itl_p99, old.itl_p99)} | "
                     f"{limits[0]} | {limits[1]} |")
    return "\n".join(lines)


def sustained_table(results: dict[str, dict[int, Summary]]) -> str:
    """The sustained mode's medians: throughput (p25–p75 of the repeats), latency percentiles and the CPU per token
    of the server process alone (of the loop for a baseline), with its spread."""
    lines = [
        "| N | system | repeats | tokens/s | p25–p75 | requests/s | TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms "
        "| serving CPU µs/token (p25–p75) | rows/step |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted(next(iter(results.values()))):
        for name, by_n in results.items():
            s = by_n[n]
            cpu_low, cpu_high = quartiles(s.runs_serving_us_per_token)
            lines.append(
                f"| {n} | {name} | {s.repeats} | {s.tokens_per_s:.0f} | {s.spread[0]:.0f}–{s.spread[1]:.0f} | "
                f"{s.requests_per_s:.1f} | {_ms(s.ttft_p50)} / {_ms(s.ttft_p90)} / {_ms(s.ttft_p99)} | "
                f"{_ms(s.itl_p50)} / {_ms(s.itl_p90)} / {_ms(s.itl_p99)} | "
                f"{s.serving_us_per_token:.0f} ({cpu_low:.0f}–{cpu_high:.0f}) | {s.batch:.1f} |"
            )
    return "\n".join(lines)


def goals_table(results: dict[str, dict[int, Summary]]) -> str:
    """Issue #15's ratios per server system: tokens/s ÷ (a) (goal ≥ 0.8) and ÷ (c) (≥ 6), serving CPU per token
    ÷ (a)'s (≤ 1.3), ITL p99 ÷ (a)'s (≤ 3)."""
    lines = ["| N | system | tokens/s ÷ (a) | tokens/s ÷ (c) | CPU/token ÷ (a) | ITL p99 ÷ (a) |",
             "|---:|---|---:|---:|---:|---:|"]

    def ratio(a: float, b: float) -> str:
        return "-" if math.isnan(a) or math.isnan(b) or b <= 0 else f"{a / b:.2f}"

    ort, torch = results.get(BASELINES[0], {}), results.get(BASELINES[2], {})
    for n in sorted(results["server"]):
        for system in [name for name in results if name not in BASELINES]:
            s, a, c = results[system][n], ort.get(n), torch.get(n)
            lines.append(f"| {n} | {system} | {ratio(s.tokens_per_s, a.tokens_per_s) if a else '-'} | "
                         f"{ratio(s.tokens_per_s, c.tokens_per_s) if c else '-'} | "
                         f"{ratio(s.serving_us_per_token, a.serving_us_per_token) if a else '-'} | "
                         f"{ratio(s.itl_p99, a.itl_p99) if a else '-'} |")
    return "\n".join(lines)
