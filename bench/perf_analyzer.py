"""``python -m bench.perf_analyzer``: NVIDIA's perf_analyzer against the server's KServe endpoint, beside this
bench's own load at the same concurrency: a second opinion from a tool we did not write.

For each task and ``N`` it runs, against one server process, this bench's streams (``load.py``: ``N``
concurrent ``seqserve.v1`` streams, medians of ``--repeats``) and then ``perf_analyzer
--concurrency-range N`` on ``inference.GRPCInferenceService`` with the same texts
(``--input-data``, written from ``workloads.py``):

- sentiment: sequences (the model takes ``sequence_id``), one test snippet per sequence; with ``--chunks
  snippet`` (the default) the whole snippet is one request (START and END), as this bench's
  ``StreamSentiment`` sends it in one message;
  with ``--chunks word`` each word is one request, about one token each: a round trip per token;
- translation: ``--streaming`` (decoupled): one response per token plus a final one per request; with
  ``--tokens-per-message K`` both tools ask for up to K tokens per message (``max_tokens_per_message``).

perf_analyzer reports requests/s; the tokens/s beside this bench's are requests/s × the tokens per
request of its input data (all the texts' tokens over all their requests).

Results: ``bench/results/<label>/`` gets each perf_analyzer report (``*.log``, its CSV ``*.csv``),
the input files and ``results.json`` with both tools' figures. The binary: ``$PERF_ANALYZER`` (a
command line), else the one in the ``perf-analyzer`` wheel, else ``perf_analyzer`` on the PATH.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from importlib.util import find_spec
from pathlib import Path

from bench import load, workloads
from bench.stats import summarize

RESULTS = Path("bench/results")


def command() -> list[str] | None:
    """How to start perf_analyzer here, or None when no binary is found."""
    if os.environ.get("PERF_ANALYZER"):
        return shlex.split(os.environ["PERF_ANALYZER"])
    spec = find_spec("perf_analyzer")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "bin" / "perf_analyzer"
        if binary.is_file():
            return [str(binary)]
    found = shutil.which("perf_analyzer")
    return [found] if found else None


def runnable() -> tuple[list[str] | None, str]:
    """The command and ``""`` when ``perf_analyzer --version`` works, else None and why not."""
    found = command()
    if found is None:
        return None, "no perf_analyzer binary (the perf-analyzer wheel has none for this platform; set PERF_ANALYZER)"
    try:
        done = subprocess.run([*found, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as error:
        return None, f"{shlex.join(found)} cannot start: {error}"
    if done.returncode != 0:
        return None, f"{shlex.join(found)} --version failed: {(done.stderr or done.stdout).strip()[:300]}"
    return found, ""


def sentiment_data(workload: workloads.Workload, chunks: str = "snippet") -> dict:
    """One sequence per snippet: the snippet as one request, or one word (and the space after it) per request."""
    def step(chunk: str) -> dict:
        return {"TEXT": {"content": [chunk], "shape": [1]}}

    if chunks == "snippet":
        return {"data": [[step(text)] for text in workload.texts]}
    return {"data": [[step(word + " ") for word in text.split()] for text in workload.texts]}


def translation_data(workload: workloads.Workload) -> dict:
    return {"data": [{"TEXT": {"content": [text], "shape": [1]}} for text in workload.texts]}


def perf_analyzer(binary: list[str], target: str, task: str, data: Path, n: int, out: Path, window_ms: int,
                  stability: int = 25, trials: int = 8, tokens_per_message: int = 1) -> dict[str, float]:
    """One perf_analyzer run at concurrency ``n`` (stable when its last 3 windows are within ``stability`` %);
    its CSV row (the per-second figures, microseconds) as numbers, its report in ``out.log``."""
    args = [*binary, "-m", task, "-u", target, "-i", "grpc", "--input-data", str(data), "--concurrency-range",
            str(n), "--measurement-interval", str(window_ms), "--stability-percentage", str(stability),
            "--max-trials", str(trials), "-f", str(out.with_suffix(".csv"))]
    if task == "translation":
        args += ["--streaming", "--request-parameter", f"max_tokens_per_message:{tokens_per_message}:int"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    out.with_suffix(".log").write_text(f"$ {shlex.join(args)}\n\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}); see {out.with_suffix('.log')}")
    with out.with_suffix(".csv").open() as rows:
        row = next(csv.DictReader(rows))
    return {key: float(value) for key, value in row.items() if value and value.replace(".", "", 1).isdigit()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf_analyzer", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sentiment", "translation"], choices=["sentiment", "translation"])
    p.add_argument("--streams", nargs="+", type=int, default=[1, 8, 64])
    p.add_argument("--repeats", type=int, default=3, help="repeats of this bench's own load per N")
    p.add_argument("--window-ms", type=int, default=8000, help="perf_analyzer's measurement window")
    p.add_argument("--stability", type=int, default=30, help="perf_analyzer's --stability-percentage")
    p.add_argument("--trials", type=int, default=10, help="perf_analyzer's --max-trials")
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--tokens-per-message", type=int, default=1, help="translation: max_tokens_per_message")
    p.add_argument("--chunks", choices=["snippet", "word"], default="snippet", help="sentiment: what one request is")
    p.add_argument("--label", default=time.strftime("perf-analyzer-%Y%m%d-%H%M"))
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server subprocess on the way out
    binary, why = runnable()
    if binary is None:
        sys.exit(f"perf_analyzer cannot run here: {why}")
    folder = RESULTS / args.label
    folder.mkdir(parents=True, exist_ok=True)
    said = subprocess.run([*binary, "--version"], capture_output=True, text=True)
    version = (said.stdout + said.stderr).strip()  # it prints its version on stderr
    machine = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "nproc": os.cpu_count(), "perf_analyzer": version,
               "loadavg_before": os.getloadavg()[:2],
               "command": shlex.join(["python", "-m", "bench.perf_analyzer", *(argv or sys.argv[1:])])}
    results: dict = {"machine": machine, "results": {}}
    for task in args.tasks:
        model_dir = workloads.newest_version(args.models, task)
        workload = (workloads.translation if task == "translation" else workloads.sentiment)(
            model_dir, max(args.streams))
        inputs = translation_data(workload) if task == "translation" else sentiment_data(workload, args.chunks)
        data = folder / f"{task}-input.json"
        data.write_text(json.dumps(inputs))
        streams = (partial(load.translate, tokens_per_message=args.tokens_per_message) if task == "translation"
                   else load.stream_sentiment)
        with load.serving(args.models, 256) as served:
            # perf_analyzer cycles through all the texts: tokens per request = all their tokens / all requests
            # (translation: the tokens the server emits for them, from one run of this bench's load over all)
            tokens = (streams(served, workload).tokens if task == "translation" else sum(map(len, workload.ids)))
            requests = len(inputs["data"]) if task == "translation" else sum(map(len, inputs["data"]))
            per_request = tokens / requests
            for n in args.streams:
                ours = workload.take(n)
                streams(served, ours)  # warm-up
                summary = summarize([streams(served, ours) for _ in range(args.repeats)])
                row = {"bench_tokens_per_s": summary.tokens_per_s, "bench_ttft_p50_ms": summary.ttft_p50 * 1000,
                       "bench_runs_tokens_per_s": summary.runs_tokens_per_s}
                results["results"].setdefault(task, {})[n] = row
                try:
                    report = perf_analyzer(binary, served.target, task, data, n, folder / f"{task}-c{n}",
                                           args.window_ms, args.stability, args.trials, args.tokens_per_message)
                except RuntimeError as error:  # no stable measurement on a busy machine: recorded, not fatal
                    row["perf_analyzer_error"] = str(error)
                    print(f"{task} N={n}: this bench {summary.tokens_per_s:.0f} tokens/s; {error}", flush=True)
                    continue
                rate = report["Inferences/Second"] * per_request
                row |= {"perf_analyzer_requests_per_s": report["Inferences/Second"], "tokens_per_request": per_request,
                        "perf_analyzer_tokens_per_s": rate, "perf_analyzer": report}
                print(f"{task} N={n}: this bench {summary.tokens_per_s:.0f} tokens/s; perf_analyzer "
                      f"{report['Inferences/Second']:.1f} requests/s × {per_request:.1f} = {rate:.0f} tokens/s",
                      flush=True)
    results["machine"]["loadavg_after"] = os.getloadavg()[:2]
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
