"""``python -m bench.profile``: where the server's CPU per token goes, sampled with ``py-spy`` under sustained load.

The server runs as in ``python -m bench`` (a subprocess, its defaults); ``N`` closed-loop clients of
the task (``load.closed_loop``: ``Translate`` or ``StreamSentiment`` calls) keep it busy while
``py-spy --native`` samples it twice: once for the collapsed stacks (``--format raw``, sorted into
parts here) and once more, in a second run, for the flame graph (SVG). A sample goes to the part of
``PARTS`` whose pattern its innermost frame matches; samples of idle threads (blocked in a lock,
queue or poll) are left out, and those of threads waiting to take the GIL back are counted apart.
``py-spy`` sees only the threads that run Python, so the parts are shares of those threads' CPU
(``/proc/<pid>/task``, over the sampled window) per token, and the native threads (ONNX Runtime's
intra-op pool, gRPC core) are one row of their own. ``--native`` pauses the server for each sample,
which costs it some throughput while sampled.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench import load, workloads
from bench.stats import Sustained

# (part, pattern of a frame): a sample goes to the part of its innermost frame that matches one (the first such
# part of this list when several match that frame).
PARTS = [
    ("ONNX Runtime (step and encoder runs, in the generation thread)",
     r"run_with_iobinding|onnxruntime|\brun_parts\b|Session\.run"),
    ("gathering (schedule: filter, concatenate, bind, prefill; a scheduler's gather, scatter and split)",
     r"\.(schedule|filter|replace|take|concatenate|bind|prefill|gather|split|_cut|stack) \(server/|engine\.py"),
    ("pick and update (argmax, Token objects, step metrics)", r"(Generator\.update|\.pick) \(server/"),
    ("tokenization (source encode, pieces, words)", r"subword|sentencepiece|\bpiece |words\.py"),
    ("message building (protobuf, attention lists)",
     r"TranslateUpdate|TranslateToken|\btolist\b|_pb2|protobuf|_upb|wire\.py|Translate \(server/services|"
     r"SentimentService\._send"),
    ("queueing (deliver, chunks, asyncio.Queue)", r"\bdeliver |\.chunks |queues\.py|call_soon_threadsafe"),
    ("interceptor, counters and timers", r"interceptor\.py|prometheus|metrics\.py|Call\.(emitted|stream_opened)"),
    ("gRPC write and read (cygrpc, HTTP/2, sockets)", r"cygrpc|Call\.write|sendmsg|recvmsg"),
    ("event loop (asyncio scheduling, selectors)", r"asyncio|selectors|_run_once"),
    ("garbage collection", r"gc_collect"),
    ("task and servicer code (server/tasks, server/services: streams, update objects)", r"server/(tasks|services)/"),
]
OTHER = "other Python"
IDLE = re.compile(r"PyThread_acquire_lock|epoll_wait|^poll |select_poll|select_epoll|sem_wait|sem_timedwait")
GIL = re.compile(r"pthread_cond_(timed)?wait")  # a thread that waits to take the GIL back: not CPU
WAITING = "waiting for the GIL (not CPU)"


def classify(stacks: Counter[str]) -> Counter[str]:
    """Samples per part of ``PARTS`` (``OTHER`` when none matches, ``WAITING`` for a GIL wait) from py-spy's
    collapsed stacks; idle threads' samples (blocked in a lock, a queue or a poll) are left out."""
    compiled = [(part, re.compile(pattern)) for part, pattern in PARTS]
    parts: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        if any(IDLE.search(f) for f in frames):
            continue
        if GIL.search(frames[-1]) or (len(frames) > 1 and GIL.search(frames[-2])):
            parts[WAITING] += count
            continue
        matched = (part for frame in reversed(frames) for part, pattern in compiled if pattern.search(frame))
        parts[next(matched, OTHER)] += count
    return parts


def collapsed(path: Path) -> Counter[str]:
    """py-spy's raw output: ``frame;frame;… count`` per line."""
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks[stack] += int(count)
    return stacks


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of ``pid`` (``/proc/<pid>/task/<tid>/stat``)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def python_threads(spy: str, pid: int) -> set[int]:
    """The thread ids that run Python (``py-spy dump``); the others are native (ONNX Runtime's pool, gRPC core)."""
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, check=True).stdout
    return {int(tid) for tid in re.findall(r"^Thread (\d+) ", dump, flags=re.M)}


def table(parts: Counter[str], python_us: float, native_us: float) -> str:
    """Each part's share of the Python threads' CPU samples times their CPU per token, and the native threads'."""
    cpu = sum(n for part, n in parts.items() if part != WAITING)
    lines = ["| part | samples | share of Python CPU | µs per token |", "|---|---:|---:|---:|"]
    for part, count in parts.most_common():
        if part != WAITING:
            lines.append(f"| {part} | {count} | {count / cpu:.1%} | {count / cpu * python_us:.0f} |")
    lines.append(f"| native threads (ONNX Runtime's intra-op pool, gRPC core), `/proc` | - | - | {native_us:.0f} |")
    lines.append(f"| all (server CPU per token, `/proc`) | {cpu} | - | {python_us + native_us:.0f} |")
    lines.append(f"| {WAITING} | {parts[WAITING]} | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["translation", "sentiment"], default="translation")
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--tokens-per-message", type=int, default=1, help="the calls' max_tokens_per_message")
    p.add_argument("--seconds", type=float, default=20.0, help="each of the two samplings")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--svg", type=Path, help="default: docs/img/profile-<streams>-<task>.svg")
    p.add_argument("--raw", type=Path, help="default: bench/results/profile/stacks-<task>.txt")
    p.add_argument("--server-args", default="", help="more server flags")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    model_dir = workloads.newest_version(args.models, args.task)
    if model_dir is None:
        raise SystemExit(f"no {args.task} model in {args.models}")
    workload = (workloads.translation if args.task == "translation" else workloads.sentiment)(model_dir, 100_000)
    calls = load.translate if args.task == "translation" else load.stream_sentiment
    args.svg = args.svg or Path(f"docs/img/profile-{args.streams}-{args.task}.svg")
    args.raw = args.raw or Path(f"bench/results/profile/stacks-{args.task}.txt")
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.raw.parent.mkdir(parents=True, exist_ok=True)
    closed = Sustained(args.streams, args.seconds, args.warmup)
    with load.serving(args.models, 256, args.server_args.split()) as served:
        python = python_threads(spy, served.pid)
        failures: list[str] = []
        totals: list[dict[int, float]] = []

        def sample(fmt: str, out: Path) -> None:
            time.sleep(args.warmup)
            totals.append(thread_cpu(served.pid))
            done = subprocess.run([spy, "record", "--pid", str(served.pid), "--duration", str(int(args.seconds)),
                                   "--native", "--format", fmt, "--output", str(out)], capture_output=True, text=True)
            totals.append(thread_cpu(served.pid))
            if done.returncode != 0:
                failures.append(f"py-spy --format {fmt}: {done.stderr.strip()[-2000:]}")

        runs = []
        for fmt, out in (("raw", args.raw), ("flamegraph", args.svg)):
            sampler = threading.Thread(target=sample, args=(fmt, out))
            sampler.start()
            runs.append(calls(served, workload, closed=closed, tokens_per_message=args.tokens_per_message))
            sampler.join()
    if failures:
        raise SystemExit("\n".join(failures))
    run, (before, after) = runs[0], totals[:2]
    used = {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}
    python_us = sum(s for tid, s in used.items() if tid in python) / run.tokens * 1e6
    native_us = sum(s for tid, s in used.items() if tid not in python) / run.tokens * 1e6
    print(f"{args.streams} {args.task} streams ({model_dir}, {args.tokens_per_message} tokens per message at most), "
          f"{run.tokens_per_s:.0f} tok/s, server "
          f"{run.server_cpu_s / run.tokens * 1e6:.0f} µs CPU/token while sampled (the whole process; "
          f"by thread {python_us + native_us:.0f}); flame graph {args.svg}, stacks {args.raw}\n")
    print(table(classify(collapsed(args.raw)), python_us, native_us))


if __name__ == "__main__":
    main()
