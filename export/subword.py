"""Check the training run's sentencepiece model before export ships it as ``spm.model``.

The file ships as it is and ``contract.subword.Subwords`` runs it with the ``sentencepiece``
package, so the server tokenizes exactly as training did. What is checked here is what the
manifest states about it: a BPE model (the description says so, and BPE is what was compared with
the old tokenizer), a normalizer that sentencepiece compiles into the file itself (so the file
alone defines the text normalization), and the special ids the graphs were trained with.
"""

from __future__ import annotations

from pathlib import Path

BPE = 2  # sentencepiece TrainerSpec.ModelType
NORMALIZERS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")  # sentencepiece's built-in rules


def check_subwords(model_file: Path, special_ids: dict[str, int]) -> Path:
    """``model_file`` if it is a BPE model with a built-in normalizer and these ``{"pad_id": 0, ...}``."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != BPE:
        raise ValueError(f"{model_file}: model type {trainer.model_type} is not BPE ({BPE})")
    if normalizer.name not in NORMALIZERS:
        raise ValueError(f"{model_file}: normalizer {normalizer.name!r} is not one of {NORMALIZERS}")
    found = {name: getattr(trainer, name) for name in special_ids}
    if found != special_ids:
        raise ValueError(f"{model_file}: special ids {found}, the graphs were trained with {special_ids}")
    return model_file
