"""``TranslateUpdate`` bytes built from parts prepared once per vocabulary: the hot path of ``Translate``.

A streamed token's message is the same protobuf encoding that ``TranslateUpdate.SerializeToString`` gives
(byte for byte, ``tests/test_translation.py`` checks it), but its ``piece`` and ``token_id`` fields are
encoded once per vocabulary id when the model loads, its attention goes out as the float32 bytes of its
numpy row, and no message objects are made per token. The interceptor sends ``bytes`` as they are
(``rpc.passing``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from server.tasks.translation import Token

LENGTH_DELIMITED, FIXED32, VARINT = 2, 5, 0


def varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, kind: int) -> bytes:
    return varint(field << 3 | kind)


def delimited(field: int, payload: bytes) -> bytes:
    return tag(field, LENGTH_DELIMITED) + varint(len(payload)) + payload


class UpdateBytes:
    """Serialized ``TranslateUpdate``s of one vocabulary (``pieces[i]``: the piece of id ``i``)."""

    def __init__(self, pieces: Sequence[str]) -> None:
        # TranslateToken: piece = 1, token_id = 2; proto3 leaves out empty strings and zeros, as here.
        self.heads = [(delimited(1, piece.encode()) if piece else b"") + (tag(2, VARINT) + varint(i) if i else b"")
                      for i, piece in enumerate(pieces)]
        self.pieces = pieces

    def token(self, token: Token, sources: int) -> bytes:
        """One ``TranslateToken``: its head, ``log_prob`` (3) and its attention over the first ``sources`` source
        tokens (4, packed)."""
        log_prob = struct.pack("<f", token.log_prob)
        attention = np.ascontiguousarray(token.attention[:sources], dtype="<f4").tobytes()
        return (self.heads[token.token_id] + (tag(3, FIXED32) + log_prob if log_prob != b"\0\0\0\0" else b"")
                + (delimited(4, attention) if attention else b""))

    def update(self, tokens: list[Token], sources: int, source_pieces: bytes = b"") -> bytes:
        """A ``TranslateUpdate`` of ``tokens`` (1) followed by ``source_pieces`` (``source``'s bytes, or none)."""
        return b"".join(delimited(1, self.token(t, sources)) for t in tokens) + source_pieces

    def source(self, ids: list[int]) -> bytes:
        """The ``source_tokens`` field (2) of the first update: the pieces of ``ids``."""
        return b"".join(delimited(2, self.pieces[i].encode()) for i in ids)
