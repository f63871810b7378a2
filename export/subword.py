"""Write a sentencepiece model as ``pieces.json`` for the server's plain-Python tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

BPE = 2  # sentencepiece TrainerSpec.ModelType


def write_pieces(model_file: Path, out: Path) -> Path:
    """``{"model_type": "bpe", "unk_id", "add_dummy_prefix", "pieces": [[piece, score, type], ...]}``."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    if proto.trainer_spec.model_type != BPE:
        raise ValueError(f"{model_file}: only BPE subword models can be served (server/subword.py)")
    if proto.normalizer_spec.name not in ("nmt_nfkc", "nfkc") or proto.trainer_spec.byte_fallback:
        raise ValueError(f"{model_file}: normalizer {proto.normalizer_spec.name!r} or byte fallback is not supported")
    out.write_text(json.dumps({
        "model_type": "bpe",
        "unk_id": proto.trainer_spec.unk_id,
        "add_dummy_prefix": proto.normalizer_spec.add_dummy_prefix,
        "pieces": [[p.piece, p.score, p.type] for p in proto.pieces],
    }, ensure_ascii=False))
    return out
