"""The baselines the server is compared with, each a plain loop in this process.

- ``ort_*`` (a): the shipped ONNX graphs in ONNX Runtime with the server's session options, all
  ``N`` streams in one batch per step, rows dropped as they finish: the most this machine can do
  with these graphs, with no RPC, queueing or per-stream bookkeeping. These are the reference
  runtime's loops (``evaluate.greedy_steps``, ``evaluate.sentiment_steps``), timed run by run.
  In the sustained mode (``*_closed``) the batch keeps ``N`` rows: a row that ends is replaced at
  once by the next text (continuous batching, as the server does).
- ``torch_*`` (c): a naive server: the PyTorch model in eager mode, one stream per call
  (batch 1), the ``N`` streams served round-robin one step at a time. It loads the training
  checkpoint when there is one, else builds the manifest's architecture (``model``) untrained,
  so it runs on a fresh clone.

Every loop decodes exactly what the server decodes (same ids, greedy, same length limit) and
records when each stream's tokens are ready, as ``load.py`` records when they arrive.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import Request, Run, Sustained, windowed
from bench.workloads import Workload
from contract.manifest import SentimentPreprocessing
from contract.repository import Model, load_model
from contract.sessions import step_sessions
from contract.translation import greedy_tokens
from evaluate.sentiment import sentiment_steps
from evaluate.translation import STEP, Arrays, decoder_inputs, encode, greedy_steps, translation_greedy
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
    """All snippets in one batch through the stream graph (``evaluate.sentiment_steps``): a chunk graph's
    ``chunk_tokens`` tokens, or one, per stream per run; a stream leaves after its last token."""
    model = _model(workload)
    arrivals: list[list[float]] = [[] for _ in workload.ids]
    cpu, started = time.process_time(), time.perf_counter()
    runs = rows_run = 0
    for rows, _, counts in sentiment_steps(model, workload.ids):
        now = time.perf_counter() - started
        runs, rows_run = runs + 1, rows_run + len(rows)
        for row, count in zip(rows.tolist(), counts.tolist(), strict=True):
            arrivals[row].extend([now] * count)
    seconds = time.perf_counter() - started
    return Run(arrivals, seconds, time.process_time() - cpu, batch=rows_run / runs, step_s=seconds / runs)


class ClosedLoop:
    """In-process closed-loop clients (the sustained mode): ``open`` starts the next request (request ``k``
    takes text ``k`` of the workload, round and round) until the measured window has ended; ``tick`` after
    every step notes the window's start and returns False once it has ended."""

    def __init__(self, workload: Workload, sustained: Sustained) -> None:
        self.texts, self.requests, self.seconds = len(workload.ids), list[Request](), sustained.seconds
        self.start = time.perf_counter() + sustained.warmup  # the window starts at the first step after this
        self.end = math.inf
        self.cpu = math.nan
        self.steps = self.rows = 0  # within the window

    def open(self) -> tuple[int, Request]:
        request = Request(time.perf_counter())
        self.requests.append(request)
        return (len(self.requests) - 1) % self.texts, request

    def tick(self, rows: int) -> bool:
        now = time.perf_counter()
        if now >= self.start and math.isnan(self.cpu):
            self.cpu, self.start, self.end = time.process_time(), now, now + self.seconds
        elif not math.isnan(self.cpu):
            self.steps, self.rows = self.steps + 1, self.rows + rows
        if now < self.end:
            return True
        self.end = now
        return False

    def run(self) -> Run:
        seconds = self.end - self.start
        return windowed(self.requests, self.start, self.end, time.process_time() - self.cpu,
                        batch=self.rows / self.steps, step_s=seconds / self.steps)


def _fit(array: np.ndarray, length: int, pad: float | bool) -> np.ndarray:
    """``array`` (rows, source, …) padded with ``pad`` along the source axis to ``length``."""
    widths = [(0, 0), (0, length - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, constant_values=pad)


def ort_translation_closed(workload: Workload, sustained: Sustained) -> Run:
    """(a) in the sustained mode: ``sustained.clients`` rows decoded as one batch, one ``decoder_step`` run per
    step; a row that ends (EOS) is replaced at once, in its place, by the next text, the joining rows encoded
    together (as the server's prefill) and their context padded to the batch's source length."""
    model = _model(workload)
    session, specs = model.sessions[STEP], model.manifest.state_of(STEP)
    pads = {c.input: c.pad_value for c in model.manifest.context_of(STEP)}
    names = [o.name for o in session.get_outputs()]
    loop = ClosedLoop(workload, sustained)

    def admit(count: int) -> tuple[list[Request], Arrays, Arrays, np.ndarray]:
        opened = [loop.open() for _ in range(count)]
        sources = [workload.ids[index] for index, _ in opened]
        state, context = decoder_inputs(model, encode(model, sources))
        return [r for _, r in opened], state, context, np.array([workload.limit(i) for i, _ in opened])

    requests, state, context, limits = admit(sustained.clients)
    steps, prev = np.zeros(len(requests), dtype=np.int64), np.full(len(requests), workload.bos, dtype=np.int64)
    while True:
        out = dict(zip(names, session.run(names, {"prev_tokens": prev, **state, **context}), strict=True))
        tokens = greedy_tokens(out["log_probs"], steps, limits, workload.eos).astype(np.int64)
        now, going = time.perf_counter(), tokens != workload.eos
        for request, token_going in zip(requests, going.tolist(), strict=True):
            if token_going:
                request.arrivals.append(now)
            else:
                request.end = now
        if not loop.tick(len(requests)):
            return loop.run()
        state, prev, steps = {s.input: out[s.output] for s in specs}, tokens, steps + 1
        if not going.all():  # each ended row takes the next text in place, as the server's generation loop does
            ended = np.flatnonzero(~going)
            joined, new_state, new_context, new_limits = admit(len(ended))
            for row, request in zip(ended.tolist(), joined, strict=True):
                requests[row] = request
            for name, array in state.items():
                array[ended] = new_state[name]
            length = max(context["mask"].shape[1], new_context["mask"].shape[1])
            if length > context["mask"].shape[1]:  # a longer source: the whole batch is padded once more
                context = {name: _fit(array, length, pads[name]) for name, array in context.items()}
            for name, array in context.items():
                array[ended] = _fit(new_context[name], length, pads[name])
            limits[ended], steps[ended], prev[ended] = new_limits, 0, workload.bos


def ort_sentiment_closed(workload: Workload, sustained: Sustained) -> Run:
    """(a) in the sustained mode: ``sustained.clients`` streams as one batch of the stream graph, a chunk graph's
    ``chunk_tokens`` tokens (or one) per stream per run; a stream that has had its last token is replaced at once
    by the next snippet."""
    model = _model(workload)
    pre = model.preprocessing(SentimentPreprocessing)
    graph, width = pre.stream_graph, pre.chunk_tokens or 1
    session, specs = model.sessions[graph], model.manifest.state_of(graph)
    names = [o.name for o in session.get_outputs()]
    loop = ClosedLoop(workload, sustained)

    def admit(count: int) -> tuple[list[Request], list[list[int]], Arrays]:
        opened = [loop.open() for _ in range(count)]
        state = {s.input: np.full((count, *s.shape), s.initial, dtype=s.dtype) for s in specs}
        return [r for _, r in opened], [workload.ids[i] for i, _ in opened], state

    requests, ids, state = admit(sustained.clients)
    t = np.zeros(len(requests), dtype=np.int64)
    while True:
        lengths = np.array([len(row) for row in ids])
        piece = np.minimum(lengths - t, width)
        feed = np.full((len(ids), int(piece.max())), pre.pad_id, dtype=np.int64)
        for row, (stream, start, count) in enumerate(zip(ids, t.tolist(), piece.tolist(), strict=True)):
            feed[row, :count] = stream[start : start + count]
        out = dict(zip(names, session.run(names, {**pre.stream_inputs(feed, piece), **state}), strict=True))
        now, t = time.perf_counter(), t + piece
        going = t < lengths
        for request, count, row_going in zip(requests, piece.tolist(), going.tolist(), strict=True):
            request.arrivals.extend([now] * count)
            if not row_going:
                request.end = now
        if not loop.tick(len(requests)):
            return loop.run()
        state = {s.input: out[s.output] for s in specs}
        if not going.all():
            joined, joined_ids, new_state = admit(int((~going).sum()))
            keep = going.tolist()
            requests = [r for r, g in zip(requests, keep, strict=True) if g] + joined
            ids = [row for row, g in zip(ids, keep, strict=True) if g] + joined_ids
            state = {k: np.concatenate([v[going], new_state[k]]) for k, v in state.items()}
            t = np.concatenate([t[going], np.zeros(len(joined), dtype=np.int64)])


def _round_robin(workload: Workload, sustained: Sustained | None, begin: Callable[[int], Any],
                 advance: Callable[[int, Any], tuple[bool, Any]]) -> Run:
    """(c)'s naive server: every open stream advanced one batch-1 step in turn. ``begin(text)`` opens a stream,
    ``advance(text, stream)`` steps it: (a token was emitted, the stream or None once it has ended). In the
    sustained mode ``sustained.clients`` streams stay open (an ended one is replaced by the next text);
    otherwise one stream per text of ``workload``, all opened at the start."""
    loop = ClosedLoop(workload, sustained) if sustained is not None else None
    cpu, started = time.process_time(), time.perf_counter()
    opened = [loop.open() for _ in range(sustained.clients)] if loop else [
        (index, Request(started)) for index in range(len(workload.ids))]
    live = [[index, request, begin(index)] for index, request in opened]
    while live:
        for slot in list(live):
            index, request, stream = slot
            emitted, slot[2] = advance(index, stream)
            now = time.perf_counter()
            if emitted:
                request.arrivals.append(now)
            if slot[2] is None:
                request.end = now
                if loop is None:
                    live.remove(slot)
                else:
                    slot[0], slot[1] = loop.open()
                    slot[2] = begin(slot[0])
            if loop is not None and not loop.tick(1):
                return loop.run()
    arrivals = [[a - started for a in request.arrivals] for _, request in opened]
    seconds = time.perf_counter() - started
    return Run(arrivals, seconds, time.process_time() - cpu, batch=1.0, step_s=seconds / sum(map(len, arrivals)))


def torch_translation(workload: Workload, checkpoint: Path, sustained: Sustained | None = None) -> Run:
    """(c) for translation: encode each source alone, then one batch-1 ``step`` per stream per turn.

    Without ``checkpoint`` the model is built from the manifest's architecture with untrained weights (the
    speed does not depend on them): each step still runs the whole step and its argmax, but the token fed
    back and emitted is the shipped graphs' greedy token, so it decodes as many tokens as the server."""
    import torch

    torch.set_num_threads(Config().intra_op_threads)
    model = _seq2seq(checkpoint) if checkpoint.is_file() else _seq2seq_of(workload)
    forced = None if checkpoint.is_file() else _greedy_reference(workload.model_dir, tuple(map(tuple, workload.ids)))

    def begin(index: int) -> list[Any]:
        ids = workload.ids[index]
        outputs, keys, mask, state = model.encode(torch.tensor([ids]), torch.tensor([len(ids)]))
        return [torch.tensor([workload.bos]), state, outputs, keys, mask, 0]

    def advance(index: int, stream: list[Any]) -> tuple[bool, list[Any] | None]:
        prev, state, outputs, keys, mask, steps = stream
        log_probs, state, _ = model.step(prev, state, outputs, keys, mask)
        token = int(log_probs[0].argmax())
        if forced is not None:
            token = forced[index][steps] if steps < len(forced[index]) else workload.eos
        if steps + 1 >= workload.limit(index) or token == workload.eos:
            return False, None
        return True, [torch.tensor([token]), state, outputs, keys, mask, steps + 1]

    with torch.no_grad():
        return _round_robin(workload, sustained, begin, advance)


@functools.cache
def _greedy_reference(model_dir: Path, sources: tuple[tuple[int, ...], ...]) -> list[list[int]]:
    """The shipped graphs' greedy output ids of ``sources`` (ONNX Runtime, ``evaluate``)."""
    return translation_greedy(load_model(model_dir), [list(s) for s in sources])


def _seq2seq_of(workload: Workload):
    """``training.seq2seq.Seq2Seq`` of the manifest's architecture (``model``), with untrained weights."""
    from training.seq2seq import Seq2Seq, Seq2SeqConfig

    model = workload.manifest.raw["model"]
    fields = ("vocab_size", "emb", "hidden", "attention", "attention_dim")
    return Seq2Seq(Seq2SeqConfig(**{name: model[name] for name in fields})).eval()


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


def torch_sentiment(workload: Workload, checkpoint: Path, sustained: Sustained | None = None) -> Run:
    """(c) for sentiment: per token, the LSTM step, running mean/max pools and classifier, batch 1, one stream per
    turn. Without ``checkpoint`` the model is the manifest's architecture with untrained weights (the same work)."""
    import torch

    from training.sentiment import Config as SentimentConfig
    from training.sentiment import SentimentModel

    torch.set_num_threads(Config().intra_op_threads)
    if checkpoint.is_file():
        payload = torch.load(checkpoint, weights_only=True)
        config = SentimentConfig(**payload["config"])
        model = SentimentModel(len(payload["state_dict"]["embedding.weight"]), config)
        model.load_state_dict(payload["state_dict"])
    else:
        architecture = workload.manifest.raw["model"]
        config = SentimentConfig(**{name: architecture[name] for name in ("cell", "embed", "hidden", "layers", "pool")})
        vocabulary = json.loads((workload.model_dir / workload.manifest.preprocessing.vocabulary).read_text())
        model = SentimentModel(len(vocabulary["words"]), config)
    model.eval()

    def advance(index: int, stream: list[Any]) -> tuple[bool, list[Any] | None]:
        state, total, peak, t = stream
        hidden, state = model.rnn(model.embedding(torch.tensor([[workload.ids[index][t]]])), state)
        x = hidden[:, -1]
        total, peak = (x, x) if total is None else (total + x, torch.maximum(peak, x))
        features = torch.cat([x, total / (t + 1), peak], dim=-1) if config.pool == "meanmax" else x
        torch.softmax(model.classifier(features), dim=-1)
        return True, None if t + 1 == len(workload.ids[index]) else [state, total, peak, t + 1]

    with torch.no_grad():
        return _round_robin(workload, sustained, lambda _: [None, None, None, 0], advance)
