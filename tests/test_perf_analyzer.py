"""NVIDIA's perf_analyzer (the binary in the perf-analyzer wheel, or ``$PERF_ANALYZER``) drives the KServe endpoint:
sentiment as sequences, translation as a decoupled stream. Skipped where the binary cannot run (the wheel's
needs glibc 2.38; docs/triton.md says how the bench ran it on older systems)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Running, wait_for

from bench import perf_analyzer, workloads
from server.config import Config

ROOT = Path(__file__).resolve().parents[1]
BINARY, WHY = perf_analyzer.runnable()
pytestmark = pytest.mark.skipif(BINARY is None, reason=f"perf_analyzer: {WHY}")


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    running = Running(Config(models=str(ROOT / "models"), host="127.0.0.1", port=0, metrics_port=0))
    yield running
    running.stop()


@pytest.mark.parametrize("task", ["sentiment", "translation"])
def test_perf_analyzer_measures_the_kserve_endpoint(running: Running, task: str, tmp_path: Path,
                                                    data_dir: Path) -> None:
    model_dir = ROOT / "models" / task / "1"
    workload = (workloads.translation if task == "translation" else workloads.sentiment)(model_dir, 4)
    data = tmp_path / "input.json"
    data.write_text(json.dumps(perf_analyzer.translation_data(workload) if task == "translation"
                               else perf_analyzer.sentiment_data(workload, "word")))
    before = running.sample("seqserve_requests_total", protocol="kserve", model=task, code="OK")
    report = perf_analyzer.perf_analyzer(BINARY, running.target, task, data, 2, tmp_path / "report", 1000,
                                         stability=100, trials=4)
    assert report["Inferences/Second"] > 0
    log = (tmp_path / "report.log").read_text()
    assert "Successful request count" in log  # its server-side section, from ModelStatistics
    if task == "translation":  # decoupled: a response per token and a final one per request
        assert "Detected decoupled model" in log and report["Response Throughput"] > 2 * report["Inferences/Second"]
    else:
        assert "Sequence count" in log
    assert running.sample("seqserve_requests_total", protocol="kserve", model=task, code="OK") > before + 10
    assert wait_for(lambda: running.in_use() == 0)  # perf_analyzer ends the sequences it started
