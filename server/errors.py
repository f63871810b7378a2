"""Errors that any protocol maps to a status, and the input checks that raise them.

Task adapters and servicers raise these; ``server/rpc.py`` turns them into gRPC status codes
(``InputError``: INVALID_ARGUMENT, ``Overloaded``: RESOURCE_EXHAUSTED). Every message names the
field and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class InputError(ValueError):
    """A client mistake in a request field."""


class Overloaded(RuntimeError):
    """No free stream slot or a full queue: the client should retry later."""


def clip(text: str, most: int = 40) -> str:
    """``text`` as quoted in an error message: at most ``most`` characters of it, so that a message never grows
    with what a client sent."""
    return repr(text if len(text) <= most else text[:most] + "…")


def check_text(field: str, text: str, limit: int) -> None:
    if not text.strip():
        raise InputError(f"{field} is empty")
    if len(text) > limit:
        raise InputError(f"{field} has {len(text)} characters, the limit is {limit}")


def check_texts(field: str, texts: list[str], most: int, chars: int) -> None:
    """Between 1 and ``most`` texts, each within ``chars`` characters."""
    check_count(f"{field} (their number)", len(texts), 1, most)
    for index, text in enumerate(texts):
        check_text(f"{field}[{index}]", text, chars)


def check_finite(field: str, values: Iterable[float]) -> None:
    for index, value in enumerate(values):
        if not math.isfinite(value):
            raise InputError(f"{field}[{index}] is {value}: values must be finite (no NaN or inf)")


def check_count(field: str, count: int, low: int, high: int) -> None:
    if not low <= count <= high:
        raise InputError(f"{field} is {count}, it must be between {low} and {high}")
