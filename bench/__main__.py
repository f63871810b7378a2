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

Sustained mode (``--mode sustained``, as ``perf_analyzer``'s concurrency mode): ``N`` closed-loop clients
each start their next request as soon as their last one ends, measured for ``--duration`` seconds after
``--warmup`` seconds, against baselines (a) and (c) run the same way (``baselines.py``), the systems in
turn repeat by repeat; the texts are the whole test split, round and round. Besides the burst mode's
columns it reports requests/s, p90s and the CPU per token of the server process alone (of the loop
itself for a baseline). ``--mode burst`` (the default) starts ``N`` streams at once and times them until
the last ends: a short smoke run.

Before/after: ``--compare-ref <git-ref>`` also serves that commit (a temporary ``git worktree``,
its own ``models/``, ``bench/reference.py``) as the system ``server@<ref>`` and measures only
``server``, ``server@<ref>`` and ``(a) ort``, alternating them repeat by repeat so that all three
see the same machine load; it prints each ``N``'s ratio after ÷ before.

Results go to ``bench/results/<label>/results.json`` with everything printed in ``results.log``
beside it (``--label``, default: date, time and host name; ``--json`` names another file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TextIO

from bench import baselines, load, workloads
from bench.reference import Checkout, checkout, git
from bench.report import compare_table, goals_table, ratio_table, summary_table, sustained_table
from bench.stats import Run, Summary, Sustained, summarize

PACKED = 8  # max_tokens_per_message of the server-packed system
POOL = 100_000  # the sustained mode's texts: the whole test split
RESULTS = Path("bench/results")
Runner = Callable[[workloads.Workload], Run]
Load = Callable[[load.Served, workloads.Workload], Run]


def default_label(compare_ref: str | None) -> str:
    """``20261126-1057-host`` (``…-vs-<ref>`` for a before/after run)."""
    label = f"{time.strftime('%Y%m%d-%H%M')}-{socket.gethostname().split('.')[0]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label + (f"-vs-{compare_ref}" if compare_ref else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sentiment", "translation"], choices=["sentiment", "translation"])
    p.add_argument("--streams", nargs="+", type=int, default=[1, 8, 64, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repeats-large", type=int, default=3, help="repeats when N > 64 (fewer to save time)")
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--version", type=int, help="the model version of each task measured (default: each one's newest)")
    p.add_argument("--compare-version", type=int, metavar="V",
                   help="sustained mode: also measure version V of each task, on the same server and with its own "
                        "(a), alternating with the others (systems 'server vV' and '(a) ort vV')")
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
        default=Path("runs/translation/model.pt"),
        help="used when the manifest's provenance names no existing checkpoint",
    )
    p.add_argument("--server-args", default="", help='more server flags for every server, e.g. "--max-wait-ms 2"')
    p.add_argument(
        "--compare-ref",
        metavar="GIT_REF",
        help="also serve this commit (a temporary git worktree, its own models/) and compare it with the current "
        "server: only server, server@REF and (a) run, alternating repeat by repeat",
    )
    p.add_argument("--mode", choices=["burst", "sustained"], default="burst",
                   help="burst: N streams at once until all end; sustained: N closed-loop clients for --duration")
    p.add_argument("--duration", type=float, default=30.0, help="sustained mode: seconds measured per run")
    p.add_argument("--warmup", type=float, default=5.0, help="sustained mode: seconds before each run's measurement")
    p.add_argument("--tokens-per-message", type=int, default=1,
                   help="sustained mode: the servers' streams ask for up to this many tokens per message "
                   "(max_tokens_per_message; a server that does not know the field sends one)")
    p.add_argument("--fill-messages", action="store_true",
                   help="sustained mode, translation: the streams ask the server to hold tokens back until a message "
                   "has --tokens-per-message of them (fill_messages; a server that does not know it does not)")
    p.add_argument("--label", help="results go to bench/results/LABEL/ (default: date-time-host)")
    p.add_argument("--json", type=Path, help="the results file (default: bench/results/LABEL/results.json); "
                   "the printed output goes beside it with the suffix .log")
    args = p.parse_args(argv)
    args.label = args.label or default_label(args.compare_ref)
    args.json = args.json or RESULTS / args.label / "results.json"
    return args


def measure(name: str, run: Runner, workload: workloads.Workload, repeats: int, warm_streams: int) -> Summary:
    run(workload.take(warm_streams))
    summary = summarize([run(workload) for _ in range(repeats)])
    _report(name, len(workload.texts), summary)
    return summary


def measure_alternating(systems: dict[str, Runner], workload: workloads.Workload, repeats: int,
                        warm_streams: int | None, n: int) -> dict[str, Summary]:
    """Each system warmed up (unless ``warm_streams`` is None: a sustained run warms up itself), then ``repeats``
    rounds that run every system once, in turn; each round starts with the next system, so that none always runs
    first (right after the in-process loop)."""
    for run in systems.values():
        if warm_streams is not None:
            run(workload.take(warm_streams))
    runs: dict[str, list[Run]] = {name: [] for name in systems}
    names = list(systems)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(systems[name](workload))
    summaries = {name: summarize(r) for name, r in runs.items()}
    for name, summary in summaries.items():
        _report(name, n, summary)
    return summaries


def _report(name: str, n: int, summary: Summary) -> None:
    print(f"  {name:<24} N={n:<4} {summary.tokens:>6} tokens  {summary.tokens_per_s:>9.0f} tok/s", flush=True)


def _systems(task: str, args: argparse.Namespace, workload: workloads.Workload) -> tuple[Load, Runner, Runner, Path]:
    """The task's load (``load.py``), its (a) and (c) loops and the torch checkpoint that (c) needs."""
    if task == "translation":
        checkpoint = workloads.checkpoint_of(workload, args.translation_checkpoint)
        naive = partial(baselines.torch_translation, checkpoint=checkpoint)
        return load.translate, baselines.ort_translation, naive, checkpoint
    checkpoint = workloads.checkpoint_of(workload, args.sentiment_checkpoint)
    naive = partial(baselines.torch_sentiment, checkpoint=checkpoint)
    return load.stream_sentiment, baselines.ort_sentiment, naive, checkpoint


def sustained_systems(task: str, args: argparse.Namespace, served: dict[str, load.Served], n: int,
                      workload: workloads.Workload) -> dict[str, Runner]:
    """The sustained mode's systems at ``n`` clients: each server of ``served`` (by name), (a) and, unless
    comparing two commits, (c)."""
    mode = Sustained(n, args.duration, args.warmup)
    streams, _, _, checkpoint = _systems(task, args, workload)
    options = {"closed": mode, "tokens_per_message": args.tokens_per_message}
    if task == "translation":
        options["fill"] = args.fill_messages
    systems: dict[str, Runner] = {name: partial(lambda s, w: streams(s, w, **options), s) for name, s in served.items()}
    ort = baselines.ort_translation_closed if task == "translation" else baselines.ort_sentiment_closed
    systems["(a) ort"] = partial(ort, sustained=mode)
    if args.compare_ref is None:
        naive = baselines.torch_translation if task == "translation" else baselines.torch_sentiment
        systems["(c) torch"] = partial(naive, checkpoint=checkpoint, sustained=mode)
    return systems


def bench_sustained(task: str, args: argparse.Namespace, reference: Checkout | None, model_dir: Path
                    ) -> dict[str, dict[int, Summary]]:
    workload = (workloads.translation if task == "translation" else workloads.sentiment)(model_dir, POOL)
    extra = shlex.split(args.server_args)
    results: dict[str, dict[int, Summary]] = {}
    with ExitStack() as stack:
        served = {"server": stack.enter_context(load.serving(args.models, args.server_max_batch, extra))}
        if reference is not None:
            served[f"server@{reference.ref}"] = stack.enter_context(
                load.serving(reference.models, args.server_max_batch, extra, root=reference.root))
        print(f"{task}: {model_dir}, sustained {args.duration:g} s after {args.warmup:g} s, "
              f"{len(workload.texts)} texts; servers: " + ", ".join(f"{n} {s.package} (pid {s.pid})"
                                                                   for n, s in served.items()), flush=True)
        other = args.models / task / str(args.compare_version) if args.compare_version is not None else None
        if other is not None:
            other_workload = (workloads.translation if task == "translation" else workloads.sentiment)(other, POOL)
            print(f"  and {other}, same texts: {other_workload.ids == workload.ids}", flush=True)
        for n in args.streams:
            repeats = args.repeats if n <= 64 else args.repeats_large
            systems = sustained_systems(task, args, served, n, workload)
            if other is not None:
                systems |= {f"{name} v{args.compare_version}": partial(lambda run, w: run(other_workload), run)
                            for name, run in sustained_systems(task, args, served, n, other_workload).items()
                            if name != "(c) torch"}
            for name, summary in measure_alternating(systems, workload, repeats, None, n).items():
                results.setdefault(name, {})[n] = summary
    return results


def bench_task(task: str, args: argparse.Namespace, reference: Checkout | None) -> dict[str, dict[int, Summary]] | None:
    model_dir = _model_dir(task, args)
    if model_dir is None:
        print(f"{task}: no model in {args.models / task}: skipped", flush=True)
        return None
    if args.mode == "sustained":
        return bench_sustained(task, args, reference, model_dir)
    workload = (workloads.translation if task == "translation" else workloads.sentiment)(model_dir, max(args.streams))
    streams, ort, naive, checkpoint = _systems(task, args, workload)
    extra = shlex.split(args.server_args)
    results: dict[str, dict[int, Summary]] = {}

    def repeats(n: int) -> int:
        return args.repeats if n <= 64 else args.repeats_large

    if reference is not None:
        before = f"server@{reference.ref}"
        print(f"{task}: {model_dir} against {before} ({reference.commit[:12]}, {reference.models / task})", flush=True)
        with ExitStack() as stack:
            served = stack.enter_context(load.serving(args.models, args.server_max_batch, extra))
            old = stack.enter_context(load.serving(reference.models, args.server_max_batch, extra, root=reference.root))
            idle = _idle_cpu([served, old])
            print(f"  servers: {served.package} (pid {served.pid}), {old.package} (pid {old.pid}); "
                  f"CPU while idle: {idle[0]:.1%}, {idle[1]:.1%} of a core", flush=True)
            systems = {"server": lambda w: streams(served, w), before: lambda w: streams(old, w), "(a) ort": ort}
            for n in args.streams:
                for name, summary in measure_alternating(systems, workload.take(n), repeats(n), n, n).items():
                    results.setdefault(name, {})[n] = summary
        return results

    print(f"{task}: {model_dir}, torch checkpoint {checkpoint if checkpoint.is_file() else 'none (untrained)'}",
          flush=True)

    def each_n(name: str, run: Runner, warm_cap: int | None = None) -> None:
        for n in args.streams:
            results.setdefault(name, {})[n] = measure(name, run, workload.take(n), repeats(n), min(n, warm_cap or n))

    with load.serving(args.models, args.server_max_batch, extra) as served:
        each_n("server", lambda w: streams(served, w))
        if task == "translation":
            each_n(f"server-packed {PACKED}", lambda w: load.translate(served, w, PACKED))
            each_n("server-whole", lambda w: load.translate_whole(served, w))
    with load.serving(args.models, 1, extra) as served:
        each_n("(b) server max_batch=1", lambda w: streams(served, w))
    each_n("(a) ort", ort)
    each_n("(c) torch", naive, warm_cap=8)  # batch 1 whatever N: a short warm-up suffices
    return results


def _idle_cpu(servers: list[load.Served], seconds: float = 1.0) -> list[float]:
    """Each server's CPU use with no calls (cores busy): the servers not being measured should take ~0."""
    before = [s.cpu_s() for s in servers]
    time.sleep(seconds)
    return [(s.cpu_s() - b) / seconds for s, b in zip(servers, before, strict=True)]


def _model_dir(task: str, args: argparse.Namespace) -> Path | None:
    if args.version is not None:
        chosen = args.models / task / str(args.version)
        return chosen if (chosen / "manifest.json").is_file() else None
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


class _Tee:
    """Writes to the terminal and to the log file."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextmanager
def _logged(path: Path) -> Iterator[None]:
    """Everything printed also goes to ``path``."""
    with path.open("w") as log:
        terminal, sys.stdout = sys.stdout, _Tee(sys.stdout, log)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout = terminal


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server subprocesses on the way out
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with _logged(args.json.with_suffix(".log")), ExitStack() as stack:
        reference = stack.enter_context(checkout(args.compare_ref)) if args.compare_ref else None
        run(args, argv, reference)


def run(args: argparse.Namespace, argv: list[str] | None, reference: Checkout | None) -> None:
    load1, load5, _ = os.getloadavg()
    machine = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "loadavg_before": [round(load1, 2), round(load5, 2)],
        "python": platform.python_version(),
        "versions": _versions("onnxruntime", "onnxruntime-gpu", "torch", "grpcio", "numpy"),
        "command": shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])]),
        "commit": _commit(),
    }
    if reference is not None:
        machine["compare_ref"] = {"ref": reference.ref, "commit": reference.commit}
    print(json.dumps(machine), flush=True)
    results = {}
    for task in args.tasks:
        if (task_results := bench_task(task, args, reference)) is not None:
            results[task] = task_results
            tables = ([sustained_table(task_results), goals_table(task_results)] if args.mode == "sustained"
                      else [summary_table(task_results), ratio_table(task_results)])
            if reference is not None:
                tables.append(compare_table(task_results, f"server@{reference.ref}"))
            print(f"\n### {task}\n\n" + "\n\n".join(tables) + "\n", flush=True)
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()[:2]]
    results_json = {task: {name: {n: asdict(s) for n, s in by_n.items()} for name, by_n in r.items()}
                    for task, r in results.items()}
    args.json.write_text(json.dumps({"machine": machine, "results": results_json}, indent=1) + "\n")
    print(f"load average after: {machine['loadavg_after']}; wrote {args.json} and {args.json.with_suffix('.log')}")


def _commit() -> str:
    """This checkout's commit, with ``+dirty`` when the working tree has changes."""
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, RuntimeError):
        return "unknown"


if __name__ == "__main__":
    main()
