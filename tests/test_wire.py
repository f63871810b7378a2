"""``Translate``'s update bytes (``server/services/wire.py``) are protobuf's own encoding of the same message."""

from pathlib import Path

import numpy as np

from contract.subword import Subwords
from protos.seqserve.v1 import translate_pb2 as pb
from server.services.wire import UpdateBytes, varint
from server.tasks.translation import Token

SPM = Path(__file__).resolve().parents[1] / "models" / "translation" / "1" / "spm.model"


def message(tokens: list[Token], sources: int, source: list[str]) -> pb.TranslateUpdate:
    return pb.TranslateUpdate(tokens=[pb.TranslateToken(piece=PIECES[t.token_id], token_id=t.token_id,
                                                        log_prob=t.log_prob, attention=t.attention[:sources].tolist())
                                      for t in tokens], source_tokens=source)


PIECES = Subwords(SPM).pieces


def test_varint_matches_protobuf() -> None:
    for value in (0, 1, 127, 128, 300, 3999, 2**31, 2**63 - 1):
        assert pb.TranslateToken(token_id=value).SerializeToString() == (b"\x10" + varint(value) if value else b"")


def test_update_bytes_equal_protobufs_serialization_for_every_kind_of_token() -> None:
    wire = UpdateBytes(PIECES)
    rng = np.random.default_rng(0)
    ids = [5, 17, 3]
    attention = rng.random((6, 9), dtype=np.float32)  # padded beyond the 3 source tokens
    tokens = [Token(i, float(np.float32(lp)), row) for i, lp, row in
              zip([0, 1, 42, len(PIECES) - 1, 300, 7], [-0.25, 0.0, -3.5, -1e-9, -20.0, -0.0], attention, strict=True)]
    source = [PIECES[i] for i in ids]
    for chunk in ([tokens[0]], tokens[:3], tokens):
        expected = message(chunk, len(ids), source).SerializeToString()
        assert wire.update(chunk, len(ids), wire.source(ids)) == expected
        assert wire.update(chunk, len(ids)) == message(chunk, len(ids), []).SerializeToString()
    assert wire.source(ids) == pb.TranslateUpdate(source_tokens=source).SerializeToString()
    parsed = pb.TranslateUpdate.FromString(wire.update(tokens, 2))
    np.testing.assert_array_equal(parsed.tokens[2].attention, attention[2, :2])
