"""The baselines the server is compared with, each a plain loop in this process.

- ``ort_*`` (a): the shipped ONNX graphs in ONNX Runtime with the server's session options, all
  ``N`` streams in one batch per step, rows dropped as they finish: the most this machine can do
  with these graphs, with no RPC, queueing or per-stream bookkeeping. These are the reference
  runtime's loops (``evaluate.greedy_steps``, ``evaluate.sentiment_steps``), timed step by step.
- ``torch_*`` (c): a naive server: the PyTorch model in eager mode, one stream per call
  (batch 1), the ``N`` streams served round-robin one step at a time.

Every loop decodes exactly what the server decodes (same ids, greedy, same length limit) and
records when each stream's tokens are ready, as ``load.py`` records when they arrive.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.stats import Run
from bench.workloads import Workload
from contract.repository import Model, load_model
from contract.sessions import step_sessions
from evaluate.sentiment import sentiment_steps
from evaluate.translation import encode, greedy_steps
from server.config import Config


def _model(workload: Workload) -> Model:
    """The workload's model with the server's default session options (2 intra-op threads, no spinning)."""
    config = Config()
    sessions = step_sessions(config.intra_op_threads, config.inter_op_threads, config.ort_spinning, config.providers,
                             config.cuda_tf32)
    return load_model(workload.model_dir, sessions)


def ort_translation(workload: Workload) -> Run:
    """Batched greedy decoding (``evaluate.greedy_steps``): one encoder run for all sources, then one
    decoder run per step; a token counts as ready when its step has picked it.

    The decoder's state and context stay on the session's device between steps (IO binding, as in
    the server); only the log-probabilities and the attention rows come to the host.
    """
    model = _model(workload)
    arrivals: list[list[float]] = [[] for _ in workload.ids]
    cpu, started = time.process_time(), time.perf_counter()
    encoded = encode(model, workload.ids)
    decoding, steps, rows_stepped = time.perf_counter(), 0, 0
    for step in greedy_steps(model, workload.ids, cap=workload.max_length, encoded=encoded):
        now = time.perf_counter() - started
        steps, rows_stepped = steps + 1, rows_stepped + len(step.rows)
        for row in step.rows[step.tokens != workload.eos].tolist():
            arrivals[row].append(now)
    ended = time.perf_counter()
    return Run(arrivals, ended - started, time.process_time() - cpu, batch=rows_stepped / steps,
               step_s=(ended - decoding) / steps)


def ort_sentiment(workload: Workload) -> Run:
    """All snippets in one batch, one token per stream per step (``evaluate.sentiment_steps``); a stream
    leaves after its last token."""
    model = _model(workload)
    arrivals: list[list[float]] = [[] for _ in workload.ids]
    cpu, started = time.process_time(), time.perf_counter()
    steps = 0
    for rows, _ in sentiment_steps(model, workload.ids):
        now = time.perf_counter() - started
        steps += 1
        for row in rows.tolist():
            arrivals[row].append(now)
    seconds = time.perf_counter() - started
    tokens = sum(map(len, workload.ids))
    return Run(arrivals, seconds, time.process_time() - cpu, batch=tokens / steps, step_s=seconds / steps)


def torch_translation(workload: Workload, checkpoint: Path) -> Run:
    """Round-robin over the streams: encode each source alone, then one batch-1 step per stream per turn."""
    import torch

    torch.set_num_threads(Config().intra_op_threads)
    model = _seq2seq(checkpoint)
    arrivals: list[list[float]] = [[] for _ in workload.ids]
    with torch.no_grad():
        cpu, started = time.process_time(), time.perf_counter()
        live: dict[int, list[Any]] = {}  # stream -> [prev token, state, outputs, keys, mask, steps taken]
        for index, ids in enumerate(workload.ids):
            outputs, keys, mask, state = model.encode(torch.tensor([ids]), torch.tensor([len(ids)]))
            live[index] = [torch.tensor([workload.bos]), state, outputs, keys, mask, 0]
        while live:
            for index in list(live):
                prev, state, outputs, keys, mask, steps = live[index]
                log_probs, state, _ = model.step(prev, state, outputs, keys, mask)
                token = int(log_probs[0].argmax()) if steps + 1 < workload.limit(index) else workload.eos
                if token == workload.eos:
                    del live[index]
                    continue
                arrivals[index].append(time.perf_counter() - started)
                live[index] = [torch.tensor([token]), state, outputs, keys, mask, steps + 1]
    return _batch_of_one(arrivals, time.perf_counter() - started, time.process_time() - cpu)


def _batch_of_one(arrivals: list[list[float]], seconds: float, cpu: float) -> Run:
    steps = sum(map(len, arrivals))
    return Run(arrivals, seconds, cpu, batch=1.0, step_s=seconds / steps)


def _seq2seq(checkpoint: Path):
    """``training.seq2seq.Seq2Seq`` from ``model.pt`` (``{"config", "model"}``) or a bare state dict (``best.pt``)."""
    import torch

    from training.seq2seq import Seq2Seq, Seq2SeqConfig

    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = payload.get("model", payload)
    if "config" in payload:
        config = Seq2SeqConfig(**payload["config"])
    else:
        bahdanau = "query.weight" in weights
        config = Seq2SeqConfig(
            vocab_size=weights["embed.weight"].shape[0],
            emb=weights["embed.weight"].shape[1],
            hidden=weights["init_state.weight"].shape[0],
            attention="bahdanau" if bahdanau else "luong",
            attention_dim=weights["key.weight"].shape[0],
        )
    model = Seq2Seq(config)
    model.load_state_dict(weights)
    return model.eval()


def torch_sentiment(workload: Workload, checkpoint: Path) -> Run:
    """Round-robin over the streams: per token, the LSTM step, running mean/max pools and classifier, batch 1."""
    import torch

    from training.sentiment import Config as SentimentConfig
    from training.sentiment import SentimentModel

    torch.set_num_threads(Config().intra_op_threads)
    payload = torch.load(checkpoint, weights_only=True)
    config = SentimentConfig(**payload["config"])
    model = SentimentModel(len(payload["state_dict"]["embedding.weight"]), config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    arrivals: list[list[float]] = [[] for _ in workload.ids]
    with torch.no_grad():
        cpu, started = time.process_time(), time.perf_counter()
        live: dict[int, list[Any]] = {i: [None, None, None, 0] for i in range(len(workload.ids))}  # state, sum, max, t
        while live:
            for index in list(live):
                state, total, peak, t = live[index]
                hidden, state = model.rnn(model.embedding(torch.tensor([[workload.ids[index][t]]])), state)
                x = hidden[:, -1]
                total, peak = (x, x) if total is None else (total + x, torch.maximum(peak, x))
                features = torch.cat([x, total / (t + 1), peak], dim=-1) if config.pool == "meanmax" else x
                torch.softmax(model.classifier(features), dim=-1)
                arrivals[index].append(time.perf_counter() - started)
                if t + 1 == len(workload.ids[index]):
                    del live[index]
                else:
                    live[index] = [state, total, peak, t + 1]
    return _batch_of_one(arrivals, time.perf_counter() - started, time.process_time() - cpu)
