"""The bench's sustained mode: the measured window's arithmetic, and the in-process closed loops (a) and (c)
decoding what the shipped graphs decode while rows are replaced under them."""

from dataclasses import replace
from pathlib import Path

import pytest

from bench import baselines, workloads
from bench.stats import Request, Sustained, windowed
from contract.repository import load_model
from evaluate import translation_greedy

ROOT = Path(__file__).resolve().parents[1]
SHORT = Sustained(clients=6, seconds=1.0, warmup=0.2)
NAIVE = Sustained(clients=1, seconds=4.0, warmup=0.2)  # (c), one row per step: short texts, longer (a loaded machine)


def test_the_window_counts_tokens_inside_it_and_latencies_of_requests_started_inside_it() -> None:
    requests = [
        Request(0.0, [0.5, 1.5, 2.5], 2.6),  # started before the window: two tokens inside, no TTFT
        Request(1.2, [1.4, 1.9, 3.5], 3.6),  # started inside, ends after: two tokens inside, TTFT 0.2
        Request(2.0, [2.1], 2.2),  # inside: one token, ended inside
    ]
    run = windowed(requests, 1.0, 3.0, cpu_s=0.4, server_cpu_s=0.8)
    assert run.tokens == 5 and run.seconds == 2.0 and run.tokens_per_s == 2.5
    assert run.requests == 2  # the two that ended within [1, 3]
    assert run.ttft() == pytest.approx([0.2, 0.1])
    assert run.itl() == pytest.approx([0.5])  # 1.9 - 1.4; the arrival at 3.5 is outside
    assert run.serving_cpu_s == 0.8


@pytest.fixture
def loops(monkeypatch: pytest.MonkeyPatch) -> list[baselines.ClosedLoop]:
    """The closed loops that ran, kept when they report their run."""
    seen: list[baselines.ClosedLoop] = []
    report = baselines.ClosedLoop.run

    def run(self: baselines.ClosedLoop):
        seen.append(self)
        return report(self)

    monkeypatch.setattr(baselines.ClosedLoop, "run", run)
    return seen


def _check_counts(loop: baselines.ClosedLoop, expected: list[list[int]], clients: int = SHORT.clients) -> None:
    """Every request that ended emitted one token per id of the reference for its text (request ``k`` takes text
    ``k`` modulo the texts), and rows were replaced."""
    ended = [(k, r) for k, r in enumerate(loop.requests) if r.end == r.end]
    assert len(ended) > clients, "the closed loop must replace the rows that end"
    assert [len(r.arrivals) for _, r in ended] == [len(expected[k % len(expected)]) for k, _ in ended]


@pytest.fixture(scope="module")
def translation(data_dir: Path) -> workloads.Workload:
    return workloads.translation(ROOT / "models" / "translation" / "1", 40)


@pytest.fixture(scope="module")
def greedy(translation: workloads.Workload) -> list[list[int]]:
    return translation_greedy(load_model(translation.model_dir), translation.ids)


def test_ort_closed_loop_decodes_the_greedy_tokens_of_every_text(translation: workloads.Workload,
                                                                 greedy: list[list[int]],
                                                                 loops: list[baselines.ClosedLoop]) -> None:
    run = baselines.ort_translation_closed(translation, SHORT)
    assert run.tokens > 0 and run.batch == pytest.approx(SHORT.clients)  # the batch keeps its rows
    _check_counts(loops[-1], greedy)


def test_torch_without_a_checkpoint_decodes_as_many_tokens_as_the_shipped_graphs(
        translation: workloads.Workload, greedy: list[list[int]], loops: list[baselines.ClosedLoop],
        tmp_path: Path) -> None:
    short = [i for i, g in enumerate(greedy) if len(g) <= 8]
    workload = replace(translation, texts=[translation.texts[i] for i in short],
                       ids=[translation.ids[i] for i in short])
    run = baselines.torch_translation(workload, tmp_path / "absent.pt", NAIVE)
    assert run.tokens > 0 and run.batch == 1.0
    _check_counts(loops[-1], [greedy[i] for i in short], NAIVE.clients)
    burst = baselines.torch_translation(translation.take(3), tmp_path / "absent.pt")
    assert [len(a) for a in burst.arrivals] == [len(g) for g in greedy[:3]]


def test_sentiment_closed_loops_emit_one_update_per_token(data_dir: Path, loops: list[baselines.ClosedLoop],
                                                          tmp_path: Path) -> None:
    for version in ("1", "2"):  # a step graph, one token per run; a chunk graph, 16 (a 22-token text: 2 runs)
        workload = workloads.sentiment(ROOT / "models" / "sentiment" / version, 200)
        assert baselines.ort_sentiment_closed(workload, SHORT).tokens > 0
        _check_counts(loops[-1], workload.ids)
        assert sum(map(len, workload.ids)) == sum(len(r) for r in baselines.ort_sentiment(workload).arrivals)
    short = [ids for ids in workload.ids if len(ids) <= 6]
    workload = replace(workload, texts=["-"] * len(short), ids=short)
    assert baselines.torch_sentiment(workload, tmp_path / "absent.pt", NAIVE).tokens > 0
    _check_counts(loops[-1], workload.ids, NAIVE.clients)
