"""The baselines the server is compared with, each a plain loop in this process.

- ``ort_*`` (a): the shipped ONNX graphs in ONNX Runtime with the server's session options, all
  ``N`` streams in one batch per step, rows dropped as they finish: the most this machine can do
  with these graphs, with no RPC, queueing or per-stream bookkeeping.
- ``torch_*`` (c): a naive server: the PyTorch model in eager mode, one stream per call
  (batch 1), the ``N`` streams served round-robin one step at a time.

Every loop decodes exactly what the server decodes (same ids, greedy, same length limit) and
records when each stream's tokens are ready, as ``load.py`` records when they arrive.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.stats import Run
from bench.workloads import Workload
from server.config import Config
from server.engine import session_device, session_factory


def _sessions(workload: Workload) -> dict[str, ort.InferenceSession]:
    make = session_factory(Config())  # the server's defaults: 2 intra-op threads, sequential
    graphs = workload.manifest["graphs"]
    return {name: make(workload.model_dir / graph["file"]) for name, graph in graphs.items()}


def ort_translation(workload: Workload) -> Run:
    """Batched greedy decoding: one encoder run for all sources, then one decoder run per step.

    The decoder's state and context stay on the session's device between steps (IO binding, as in
    the server); only the log-probabilities and the attention rows come to the host.
    """
    manifest, sessions = workload.manifest, _sessions(workload)
    count = len(workload.ids)
    src = np.zeros((count, max(map(len, workload.ids))), dtype=np.int64)
    for row, ids in enumerate(workload.ids):
        src[row, : len(ids)] = ids
    arrivals: list[list[float]] = [[] for _ in range(count)]
    limits = np.array([workload.limit(i) for i in range(count)])
    step = sessions["decoder_step"]
    device, names = session_device(step), [o.name for o in step.get_outputs()]

    def on_device(arrays: dict[str, np.ndarray]) -> dict[str, ort.OrtValue]:
        return {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), device, 0) for k, v in arrays.items()}

    cpu, started = time.process_time(), time.perf_counter()
    encoded = _named(sessions["encoder"], {"src_ids": src, "src_lengths": np.array([len(i) for i in workload.ids])})
    states = [s for s in manifest["state"] if s["graph"] == "decoder_step"]
    state = on_device({s["input"]: encoded[s["initial"]["output"]] for s in states})
    context = {c["input"]: encoded[c["from"]["output"]] for c in manifest["context"] if c["graph"] == "decoder_step"}
    context_values = on_device(context)
    rows = np.arange(count)  # the streams still decoding, in the order of the arrays
    prev = np.full(count, workload.bos, dtype=np.int64)
    decoding, rows_stepped = time.perf_counter(), 0
    for t in range(int(limits.max())):
        rows_stepped += len(rows)
        binding = step.io_binding()
        for name, value in (state | context_values).items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_cpu_input("prev_tokens", prev)
        for name in names:
            binding.bind_output(name, "cpu" if name in ("log_probs", "attention") else device)
        step.run_with_iobinding(binding)
        out = dict(zip(names, binding.get_outputs(), strict=True))
        state = {s["input"]: out[s["output"]] for s in states}
        out["attention"].numpy()  # the server sends it: bring it to the host as the server does
        prev = np.where(t + 1 < limits[rows], out["log_probs"].numpy().argmax(-1), workload.eos)
        now = time.perf_counter() - started
        for row in rows[prev != workload.eos]:
            arrivals[row].append(now)
        going = prev != workload.eos
        if not going.all():  # re-gather only when a stream ends, as a server would
            rows, prev = rows[going], prev[going]
            state = on_device({k: v.numpy()[going] for k, v in state.items()})
            context = {k: v[going] for k, v in context.items()}
            context_values = on_device(context)
        if not len(rows):
            break
    ended = time.perf_counter()
    return Run(
        arrivals,
        ended - started,
        time.process_time() - cpu,
        batch=rows_stepped / (t + 1),
        step_s=(ended - decoding) / (t + 1),
    )


def ort_sentiment(workload: Workload) -> Run:
    """All snippets in one batch, one token per stream per step; a stream leaves after its last token."""
    specs = [s for s in workload.manifest["state"] if s["graph"] == "step"]
    session = _sessions(workload)["step"]
    count = len(workload.ids)
    lengths = np.array([len(ids) for ids in workload.ids])
    tokens = np.zeros((count, lengths.max()), dtype=np.int64)
    for row, ids in enumerate(workload.ids):
        tokens[row, : len(ids)] = ids
    arrivals: list[list[float]] = [[] for _ in range(count)]
    cpu, started = time.process_time(), time.perf_counter()
    state = {s["input"]: np.full((count, *s["shape"]), s["initial"], dtype=s["dtype"]) for s in specs}
    rows = np.arange(count)
    for t in range(int(lengths.max())):
        going = lengths[rows] > t
        if not going.all():
            rows, state = rows[going], {k: v[going] for k, v in state.items()}
        out = _named(session, {"ids": tokens[rows, t], **state})
        state = {s["input"]: out[s["output"]] for s in specs}
        now = time.perf_counter() - started
        for row in rows:
            arrivals[row].append(now)
    seconds, steps = time.perf_counter() - started, int(lengths.max())
    return Run(arrivals, seconds, time.process_time() - cpu, batch=lengths.sum() / steps, step_s=seconds / steps)


def _named(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


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
