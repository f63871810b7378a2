"""``python -m bench``: N concurrent streams against the server and the same work in three baselines.

Systems, per task and per ``N``:

- ``server``: ``python -m server`` with its defaults, ``N`` concurrent gRPC streams (``load.py``);
- ``server-packed 8`` (translation): the same streams asking for up to 8 tokens per message
  (``max_tokens_per_message``; the server packs only tokens already decoded);
- ``server-whole`` (translation): the same decoding, one message per translation instead of per token;
- ``(a) ort``: the ONNX graphs in an in-process batch-``N`` loop (``baselines.py``): the limit;
- ``(b) server max_batch=1``: the server without batching;
- ``(c) torch``: a naive per-stream PyTorch eager loop.

Option: ``--server-args "--max-wait-ms 2 --ort-spinning true"`` tries other server settings (these two were
the defaults before the measurements in ``bench/RESULTS.md``).
Each configuration runs once to warm up, then ``--repeats`` times; the tables hold medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from bench import baselines, load, workloads
from bench.report import ratio_table, summary_table
from bench.stats import Run, Summary, summarize

PACKED = 8  # max_tokens_per_message of the server-packed system
Runner = Callable[[workloads.Workload], Run]
Load = Callable[[load.Served, workloads.Workload], Run]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sentiment", "translation"], choices=["sentiment", "translation"])
    p.add_argument("--streams", nargs="+", type=int, default=[1, 8, 64, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repeats-large", type=int, default=3, help="repeats when N > 64 (fewer to save time)")
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--server-max-batch", type=int, default=256, help="the server's max_batch (its default)")
    p.add_argument(
        "--wait-for-translation",
        type=float,
        default=0.0,
        help="seconds to wait for models/translation to appear before skipping it",
    )
    p.add_argument("--sentiment-checkpoint", type=Path, default=Path("runs/sentiment/model.pt"))
    p.add_argument(
        "--translation-checkpoint",
        type=Path,
        default=Path("runs/translate/model.pt"),
        help="used when the manifest's provenance names no existing checkpoint",
    )
    p.add_argument("--server-args", default="", help='more server flags for both servers, e.g. "--max-wait-ms 2"')
    p.add_argument("--json", type=Path, default=Path("bench/results.json"))
    return p.parse_args(argv)


def measure(name: str, run: Runner, workload: workloads.Workload, repeats: int, warm_streams: int) -> Summary:
    run(workload.take(warm_streams))
    runs = [run(workload) for _ in range(repeats)]
    summary = summarize(runs)
    print(
        f"  {name:<24} N={len(workload.texts):<4} {summary.tokens:>6} tokens  {summary.tokens_per_s:>9.0f} tok/s",
        flush=True,
    )
    return summary


def bench_task(task: str, args: argparse.Namespace) -> dict[str, dict[int, Summary]] | None:
    model_dir = _model_dir(task, args)
    if model_dir is None:
        print(f"{task}: no model in {args.models / task}: skipped", flush=True)
        return None
    largest = max(args.streams)
    workload = (workloads.translation if task == "translation" else workloads.sentiment)(model_dir, largest)
    if task == "translation":
        checkpoint = workloads.checkpoint_of(workload, args.translation_checkpoint)
        streams: Load = load.translate
        ort, naive = baselines.ort_translation, lambda w: baselines.torch_translation(w, checkpoint)
    else:
        checkpoint = workloads.checkpoint_of(workload, args.sentiment_checkpoint)
        streams = load.stream_sentiment
        ort, naive = baselines.ort_sentiment, lambda w: baselines.torch_sentiment(w, checkpoint)
    print(f"{task}: {model_dir}, torch checkpoint {checkpoint}", flush=True)
    results: dict[str, dict[int, Summary]] = {}

    def each_n(name: str, run: Runner, warm_cap: int | None = None) -> None:
        for n in args.streams:
            repeats = args.repeats if n <= 64 else args.repeats_large
            results.setdefault(name, {})[n] = measure(name, run, workload.take(n), repeats, min(n, warm_cap or n))

    extra = shlex.split(args.server_args)
    program = (sys.executable, "-m", "server")
    with load.serving(args.models, args.server_max_batch, extra, program=program) as served:
        each_n("server", lambda w: streams(served, w))
        if task == "translation":
            each_n(f"server-packed {PACKED}", lambda w: load.translate(served, w, PACKED))
            each_n("server-whole", lambda w: load.translate_whole(served, w))
    with load.serving(args.models, 1, extra, program=program) as served:
        each_n("(b) server max_batch=1", lambda w: streams(served, w))
    each_n("(a) ort", ort)
    if checkpoint.is_file():
        each_n("(c) torch", naive, warm_cap=8)  # batch 1 whatever N: a short warm-up suffices
    else:
        print(f"  (c) torch: no checkpoint {checkpoint}: skipped", flush=True)
    return results


def _model_dir(task: str, args: argparse.Namespace) -> Path | None:
    deadline = time.monotonic() + args.wait_for_translation * (task == "translation")
    while (found := workloads.newest_version(args.models, task)) is None and time.monotonic() < deadline:
        time.sleep(10)
    return found


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")]
        if info.exists()
        else []
    )
    return names[0] if names else platform.processor()


def _versions(*packages: str) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server subprocess on the way out
    load1, load5, _ = os.getloadavg()
    machine = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "loadavg_before": [round(load1, 2), round(load5, 2)],
        "python": platform.python_version(),
        "versions": _versions("onnxruntime", "onnxruntime-gpu", "torch", "grpcio", "numpy"),
        "command": shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(json.dumps(machine), flush=True)
    results = {}
    for task in args.tasks:
        if (task_results := bench_task(task, args)) is not None:
            results[task] = task_results
            print(f"\n### {task}\n\n{summary_table(task_results)}\n\n{ratio_table(task_results)}\n", flush=True)
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()[:2]]
    args.json.write_text(
        json.dumps(
            {
                "machine": machine,
                "results": {
                    task: {name: {n: asdict(s) for n, s in by_n.items()} for name, by_n in r.items()}
                    for task, r in results.items()
                },
            },
            indent=1,
        )
        + "\n"
    )
    print(f"load average after: {machine['loadavg_after']}; wrote {args.json}")


if __name__ == "__main__":
    main()
