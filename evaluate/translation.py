"""Translation with the ``encoder`` and ``decoder_step`` graphs: source ids, batched greedy decoding, beam search.

Decoding follows ``training/seq2seq.py`` with the manifest's rules (``contract/translation.py``):
the source is ``(pieces + source_suffix)[:max_length]``, the output at most
``OutputLength.limit(source)`` tokens with the last forced to EOS, and EOS is not part of it.

``greedy_steps`` is the one greedy loop: ``translation_greedy`` (the check of the shipped model
and the server tests' reference) collects its tokens, and the bench's in-process baseline (a)
times them as they come.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from contract.manifest import Reference, State, TranslationPreprocessing
from contract.repository import Model
from contract.sessions import session_device
from contract.subword import Subwords
from contract.translation import Beam, greedy_tokens

ENCODER, STEP = "encoder", "decoder_step"
HOST_OUTPUTS = ("log_probs", "attention")  # what comes to the host every step; the state stays on the device

Arrays = dict[str, np.ndarray]


def preprocessing(model: Model) -> TranslationPreprocessing:
    return model.preprocessing(TranslationPreprocessing)


def tokenizer(model: Model) -> Subwords:
    return Subwords(model.path / preprocessing(model).subwords)


def translation_sources(model: Model, texts: list[str]) -> list[list[int]]:
    """Source ids as the manifest says: subword pieces + ``source_suffix`` (EOS), cut to ``max_length``."""
    pre, subwords = preprocessing(model), tokenizer(model)
    return [pre.output_length.source(subwords.encode(text), pre.source_suffix) for text in texts]


def _named(session: ort.InferenceSession, feed: Arrays) -> Arrays:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def encode(model: Model, sources: list[list[int]]) -> Arrays:
    """The encoder's outputs for ``sources``, padded with ``pad_id`` to the longest: one row per source."""
    lengths = np.array([len(source) for source in sources], dtype=np.int64)
    ids = np.full((len(sources), int(lengths.max())), preprocessing(model).pad_id, dtype=np.int64)
    for row, source in enumerate(sources):
        ids[row, : len(source)] = source
    return _named(model.sessions[ENCODER], {"src_ids": ids, "src_lengths": lengths})


def _initial(state: State, encoded: Arrays, rows: int) -> np.ndarray:
    """A decoder state's first value: the encoder output it names, or its constant."""
    if isinstance(state.initial, Reference):
        return encoded[state.initial.output]
    return np.full((rows, *state.shape), state.initial, dtype=state.dtype)


def decoder_inputs(model: Model, encoded: Arrays) -> tuple[Arrays, Arrays]:
    """The decoder's first state and its context (constant per row), both from the encoder's outputs."""
    rows = len(next(iter(encoded.values())))
    state = {s.input: _initial(s, encoded, rows) for s in model.manifest.state_of(STEP)}
    context = {c.input: encoded[c.source.output] for c in model.manifest.context_of(STEP)}
    return state, context


@dataclass(frozen=True)
class Step:
    """One batched decoder step: the rows it ran and what each of them picked."""

    rows: np.ndarray  # indices into the sources, of the rows still decoding before this step
    tokens: np.ndarray  # each row's token; EOS ends the row and is not part of its output
    log_probs: np.ndarray  # each row's log-probability of its token
    attention: np.ndarray  # [rows, source positions] (padded to the batch's longest source)


def greedy_steps(model: Model, sources: list[list[int]], cap: int | None = None,
                 encoded: Arrays | None = None) -> Iterator[Step]:
    """Greedy decoding of every source at once, one ``decoder_step`` run per step, yielded step by step.

    The decoder's state and context stay on the session's device between steps (IO binding); only
    the log-probabilities and the attention come to the host. A row leaves the batch after its EOS
    (the rest are re-gathered). ``cap`` lowers ``max_length`` for the output (a request's maximum);
    ``encoded``: the encoder's outputs for ``sources``, when the caller ran it (``encode``).
    """
    if not sources:
        return
    pre = preprocessing(model)
    session = model.sessions[STEP]
    device, names = session_device(session), [o.name for o in session.get_outputs()]
    specs = model.manifest.state_of(STEP)
    limits = pre.output_length.limit(np.array([len(source) for source in sources]), cap)
    state, context = decoder_inputs(model, encode(model, sources) if encoded is None else encoded)

    def on_device(arrays: Arrays) -> dict[str, ort.OrtValue]:
        return {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), device, 0) for k, v in arrays.items()}

    state_values, context_values = on_device(state), on_device(context)
    rows = np.arange(len(sources))
    prev = np.full(len(sources), pre.bos_id, dtype=np.int64)
    for t in range(int(limits.max())):
        binding = session.io_binding()
        for name, value in (state_values | context_values).items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_cpu_input("prev_tokens", prev)
        for name in names:
            binding.bind_output(name, "cpu" if name in HOST_OUTPUTS else device)
        session.run_with_iobinding(binding)
        out = dict(zip(names, binding.get_outputs(), strict=True))
        state_values = {s.input: out[s.output] for s in specs}
        log_probs = out["log_probs"].numpy()
        tokens = greedy_tokens(log_probs, t, limits[rows], pre.eos_id).astype(np.int64)
        yield Step(rows, tokens, log_probs[np.arange(len(rows)), tokens], out["attention"].numpy())
        going = tokens != pre.eos_id
        if not going.any():
            return
        prev = tokens[going]
        if not going.all():  # re-gather only when a row ends, as the server does
            rows = rows[going]
            state_values = on_device({k: v.numpy()[going] for k, v in state_values.items()})
            context = {k: v[going] for k, v in context.items()}
            context_values = on_device(context)


def translation_greedy(model: Model, sources: list[list[int]], batch_size: int = 64) -> list[list[int]]:
    """Greedy output ids per source (EOS dropped): ``training/seq2seq.greedy_decode`` with the two graphs."""
    return [ids for ids, _ in translation_greedy_aligned(model, sources, batch_size)]


def translation_greedy_aligned(model: Model, sources: list[list[int]], batch_size: int = 64
                               ) -> list[tuple[list[int], list[int]]]:
    """Greedy output ids per source (EOS dropped) and, per output id, the source position its attention weighs
    most (``contract.segments.restore_spans``).

    Sources run in batches of ``batch_size`` of similar length (``greedy_steps``); batching does not
    change the tokens.
    """
    eos = preprocessing(model).eos_id
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    results: list[tuple[list[int], list[int]]] = [([], []) for _ in sources]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for step in greedy_steps(model, [sources[i] for i in chunk]):
            aligned = step.attention.argmax(-1).tolist()
            for row, token, position in zip(step.rows.tolist(), step.tokens.tolist(), aligned, strict=True):
                if token != eos:
                    results[chunk[row]][0].append(token)
                    results[chunk[row]][1].append(position)
    return results


def translation_beam(model: Model, source_ids: list[int], width: int | None = None, penalty: float | None = None,
                     cap: int | None = None) -> list[int]:
    """The best hypothesis of a beam search over one source (EOS dropped): ``training/seq2seq.beam_search``.

    ``width`` rows of decoder state run together (``contract.translation.Beam`` ranks them by
    ``log p / ((5 + length) / 6) ** penalty``); ``width`` and ``penalty`` default to the manifest's
    ``beam`` and ``length_penalty``, ``cap`` lowers ``max_length``. Width 1 is greedy decoding.
    """
    pre = preprocessing(model)
    width = pre.beam if width is None else width
    penalty = pre.length_penalty if penalty is None else penalty
    session, specs = model.sessions[STEP], model.manifest.state_of(STEP)
    limit = int(pre.output_length.limit(len(source_ids), cap))
    state, context = decoder_inputs(model, encode(model, [source_ids]))
    state = {k: np.repeat(v, width, axis=0) for k, v in state.items()}
    context = {k: np.repeat(v, width, axis=0) for k, v in context.items()}
    beam = Beam(width, pre.eos_id, penalty)
    prev = np.full(width, pre.bos_id, dtype=np.int64)
    history = np.zeros((width, 0), dtype=np.int64)
    for t in range(limit):
        out = _named(session, {"prev_tokens": prev, **state, **context})
        origin, token, _ = beam.advance(out["log_probs"], at_limit=t + 1 >= limit)
        history = np.concatenate([history[origin], token[:, None]], axis=1)
        state = {s.input: out[s.output][origin] for s in specs}
        prev = token.astype(np.int64)
        if beam.done:
            break
    best = history[0].tolist()  # rows are ranked: the first is the best
    return best[: best.index(pre.eos_id)] if pre.eos_id in best else best
