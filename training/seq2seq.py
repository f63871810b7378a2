"""Encoder–decoder with attention, written as the two functions that export will trace.

``encode(src_ids, src_lengths) -> (encoder_outputs, keys, mask, state)`` runs once per source;
``step(prev_tokens, state, encoder_outputs, keys, mask) -> (log_probs, state, attention)`` is one
decoder step. Training (``forward``), greedy search and beam search all loop over ``step``, so the
function that is exported is the function that was trained.

Attention (course notes): ``alpha_ij = softmax_j(f(h_j, s_{i-1}))``, ``c_i = Σ_j alpha_ij h_j``.

- additive (Bahdanau): ``f(h_j, s) = v^T tanh(W s + U h_j)``; ``keys = U h`` is computed in
  ``encode``, once per source, so a step costs only ``W s`` and the ``tanh``.
- multiplicative (Luong "general"): ``f(h_j, s) = s^T W_a h_j``; ``keys = W_a h``.

The decoder state ``s`` is one GRU state; ``s_i = GRU([E y_{i-1}; c_i], s_{i-1})`` and the output
is ``softmax(E^T tanh(W_o [s_i; c_i; E y_{i-1}]) + b)``: one embedding matrix ``E`` for source,
target and output (joint subword vocabulary, tied embeddings).

Both encoder directions are plain unidirectional GRUs; the backward one reads each sequence
reversed *within its length* (a gather), so padding never reaches a valid position and the
encoder needs no packed sequences (which ONNX cannot express).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from contract.translation import OutputLength, length_normalized
from training.translation_data import BOS_ID, EOS_ID, PAD_ID

EncoderOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Seq2SeqConfig:
    vocab_size: int
    emb: int = 256
    hidden: int = 256
    attention: str = "bahdanau"  # or "luong"
    attention_dim: int = 256
    dropout: float = 0.2

    def to_dict(self) -> dict[str, int | float | str]:
        return asdict(self)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse ``x`` (B, S, …) along S inside each sequence's length; padding stays in place.

    Advanced indexing rather than ``gather(…, index.expand_as(x))``: the dynamo ONNX exporter
    (torch 2.13) builds a wrong ``Expand`` shape for the latter when S is dynamic.
    """
    positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, S)
    last = lengths.unsqueeze(1) - 1
    index = torch.where(positions <= last, last - positions, positions)  # (B, S)
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (B, 1)
    return x[rows, index]


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        if config.attention not in ("bahdanau", "luong"):
            raise ValueError(f"attention must be 'bahdanau' or 'luong', got {config.attention!r}")
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.emb, padding_idx=PAD_ID)
        # The matrix is also the output layer: unit-variance rows would start with logits of
        # size ~sqrt(emb) and a loss far above log(V).
        nn.init.normal_(self.embed.weight, std=c.emb**-0.5)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()
        self.encoder_fwd = nn.GRU(c.emb, c.hidden, batch_first=True)
        self.encoder_bwd = nn.GRU(c.emb, c.hidden, batch_first=True)
        self.init_state = nn.Linear(2 * c.hidden, c.hidden)
        if c.attention == "bahdanau":
            self.key = nn.Linear(2 * c.hidden, c.attention_dim, bias=False)  # U
            self.query = nn.Linear(c.hidden, c.attention_dim)  # W (its bias is the tanh's bias)
            self.energy = nn.Linear(c.attention_dim, 1, bias=False)  # v
        else:
            self.key = nn.Linear(2 * c.hidden, c.hidden, bias=False)  # W_a
        self.cell = nn.GRUCell(c.emb + 2 * c.hidden, c.hidden)
        self.pre_output = nn.Linear(c.hidden + 2 * c.hidden + c.emb, c.emb)
        self.output_bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.dropout = nn.Dropout(c.dropout)

    def encode(self, src_ids: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """``src_ids`` (B, S) int64 padded with ``PAD_ID``; ``src_lengths`` (B,) int64 ≥ 1.

        Returns ``encoder_outputs`` (B, S, 2H), ``keys`` (B, S, A) [A = H for Luong],
        ``mask`` (B, S) bool (True on real tokens) and the initial decoder state (B, H).
        """
        x = self.dropout(self.embed(src_ids))
        forward, _ = self.encoder_fwd(x)
        backward, _ = self.encoder_bwd(reverse_within_length(x, src_lengths))
        mask = torch.arange(src_ids.shape[1], device=src_ids.device).unsqueeze(0) < src_lengths.unsqueeze(1)
        outputs = torch.cat([forward, reverse_within_length(backward, src_lengths)], dim=-1)
        outputs = outputs * mask.unsqueeze(-1).to(outputs.dtype)
        mean = outputs.sum(1) / src_lengths.unsqueeze(1).to(outputs.dtype)
        state = torch.tanh(self.init_state(mean))
        return outputs, self.key(outputs), mask, state

    def step(
        self,
        prev_tokens: torch.Tensor,
        state: torch.Tensor,
        encoder_outputs: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder step: ``prev_tokens`` (B,) int64, ``state`` (B, H) and the ``encode`` outputs.

        Returns ``log_probs`` (B, V), the new ``state`` (B, H) and ``attention`` (B, S), which sums
        to 1 over real positions and is exactly 0 on padding.
        """
        y = self.dropout(self.embed(prev_tokens))
        if self.config.attention == "bahdanau":
            scores = self.energy(torch.tanh(keys + self.query(state).unsqueeze(1))).squeeze(-1)
        else:
            scores = torch.bmm(keys, state.unsqueeze(-1)).squeeze(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        attention = torch.softmax(scores, dim=-1)
        context = torch.bmm(attention.unsqueeze(1), encoder_outputs).squeeze(1)
        state = self.cell(torch.cat([y, context], dim=-1), state)
        hidden = self.dropout(torch.tanh(self.pre_output(torch.cat([state, context, y], dim=-1))))
        logits = hidden @ self.embed.weight.t() + self.output_bias
        return torch.log_softmax(logits, dim=-1), state, attention

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``tgt_in`` (B, T) starts with BOS; returns log-probs (B, T, V)."""
        encoder_outputs, keys, mask, state = self.encode(src_ids, src_lengths)
        log_probs = []
        for t in range(tgt_in.shape[1]):
            step_log_probs, state, _ = self.step(tgt_in[:, t], state, encoder_outputs, keys, mask)
            log_probs.append(step_log_probs)
        return torch.stack(log_probs, dim=1)


def smoothed_nll(log_probs: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label-smoothed NLL per real target token (``PAD_ID`` positions are ignored)."""
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    uniform = -log_probs.mean(-1)
    loss = (1 - smoothing) * nll + smoothing * uniform
    real = target != PAD_ID
    return (loss * real).sum() / real.sum()


def _length_limits(src_lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """The output limits (EOS included) of ``contract.translation.OutputLength``, capped at ``max_len``."""
    return OutputLength(max_length=max_len).limit(src_lengths)


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq, src_ids: torch.Tensor, src_lengths: torch.Tensor, max_len: int = 100
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Token ids per sentence (without EOS) and their attention matrices (T, S_i)."""
    encoder_outputs, keys, mask, state = model.encode(src_ids, src_lengths)
    batch = src_ids.shape[0]
    limits = _length_limits(src_lengths, max_len)
    prev = torch.full((batch,), BOS_ID, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool)
    tokens, attentions = [], []
    for t in range(int(limits.max())):
        log_probs, state, attention = model.step(prev, state, encoder_outputs, keys, mask)
        prev = log_probs.argmax(-1)
        prev = torch.where(finished | (t + 1 >= limits), torch.full_like(prev, EOS_ID), prev)
        tokens.append(prev)
        attentions.append(attention)
        finished |= prev == EOS_ID
        if finished.all():
            break
    return _trim(torch.stack(tokens, 1), torch.stack(attentions, 1), src_lengths)


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src_ids: torch.Tensor,
    src_lengths: torch.Tensor,
    beam: int = 5,
    length_penalty: float = 1.0,
    max_len: int = 100,
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Batched beam search; hypotheses are ranked by ``log p / ((5 + len) / 6) ** length_penalty``.

    A finished hypothesis stays in its beam with a frozen score (it can only emit EOS at no cost),
    so ranking alive and finished hypotheses is one ``topk`` per step. With ``beam=1`` every step
    is an argmax, identical to ``greedy_decode``.
    """
    batch, src_len = src_ids.shape
    encoder_outputs, keys, mask, state = (x.repeat_interleave(beam, dim=0) for x in model.encode(src_ids, src_lengths))
    limits = _length_limits(src_lengths, max_len).repeat_interleave(beam).view(batch, beam)
    scores = torch.full((batch, beam), float("-inf"))
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    lengths = torch.zeros(batch, beam)
    finished = torch.zeros(batch, beam, dtype=torch.bool)
    prev = torch.full((batch * beam,), BOS_ID, dtype=torch.long)
    history = torch.zeros(batch, beam, 0, dtype=torch.long)
    attention_history = torch.zeros(batch, beam, 0, src_len)
    rows = torch.arange(batch).unsqueeze(1)

    for t in range(int(limits.max())):
        log_probs, state, attention = model.step(prev, state, encoder_outputs, keys, mask)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.view(batch, beam, vocab)
        # Finished beams, and beams at their length limit, may only emit EOS.
        only_eos = torch.full_like(log_probs, float("-inf"))
        only_eos[..., EOS_ID] = 0.0
        at_limit = (t + 1 >= limits).unsqueeze(-1)
        eos_only_logp = torch.where(at_limit, log_probs[..., EOS_ID : EOS_ID + 1] + only_eos, log_probs)
        log_probs = torch.where(finished.unsqueeze(-1), only_eos, eos_only_logp)
        candidates = scores.unsqueeze(-1) + log_probs  # (B, K, V)
        new_lengths = torch.where(finished, lengths, lengths + 1)
        ranked = length_normalized(candidates, new_lengths.unsqueeze(-1), length_penalty)
        _, flat = ranked.view(batch, -1).topk(beam, dim=-1)
        origin, token = flat // vocab, flat % vocab  # (B, K)
        scores = candidates.view(batch, -1).gather(1, flat)
        lengths = new_lengths.gather(1, origin)
        finished = finished.gather(1, origin) | (token == EOS_ID)
        history = torch.cat([history[rows, origin], token.unsqueeze(-1)], dim=-1)
        attention = attention.view(batch, beam, src_len)[rows, origin]
        attention_history = torch.cat([attention_history[rows, origin], attention.unsqueeze(2)], dim=2)
        state = state.view(batch, beam, -1)[rows, origin].view(batch * beam, -1)
        prev = token.view(-1)
        if finished.all():
            break
    # topk sorts by the ranked score, so beam 0 is the best hypothesis of each sentence.
    return _trim(history[:, 0], attention_history[:, 0], src_lengths)


def _trim(
    tokens: torch.Tensor, attentions: torch.Tensor, src_lengths: torch.Tensor
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Cut each row at its first EOS (dropped); attention rows keep the EOS step and real columns."""
    out_tokens, out_attn = [], []
    for row, attn, length in zip(tokens.tolist(), attentions, src_lengths.tolist(), strict=True):
        end = row.index(EOS_ID) if EOS_ID in row else len(row)
        out_tokens.append(row[:end])
        out_attn.append(attn[: end + 1, :length])
    return out_tokens, out_attn
