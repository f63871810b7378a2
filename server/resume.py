"""Resume tokens: a stream frozen into signed bytes that any replica serving the same model version continues.

The format is ``protos/seqserve/v1/resume.proto``: a ``ResumeToken`` (key id, body, HMAC-SHA256) around a
``ResumeState`` (model, version, manifest sha256, expiry, the state slot's tensors and the task's position). Keys
come from ``resume_keys_file``: one ``<key id> <hex secret>`` a line, the first signs, every one verifies, so a
key rotates by adding the new one first on every replica and dropping the old one once its tokens have expired.
Without the file, tokens are off: a per-process key would only ever resume on the replica that froze the stream,
which is the case a token exists for. Security and limits: docs/server.md, Resume tokens.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from contract.repository import Model
from protos.seqserve.v1 import resume_pb2 as pb
from server.config import Config
from server.graph import Arrays
from server.repository import Repository, Served
from server.rpc import RequestError, lookup

MIN_SECRET_BYTES = 32  # HMAC-SHA256's block-size-sized keys; shorter ones are refused at start


def invalid(field: str, reason: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {reason}")


def refused(field: str, reason: str) -> RequestError:
    return RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{field}: {reason}")


def read_keys(path: str) -> dict[str, bytes]:
    """``{key id: secret}`` of a keys file, in its order (the first signs); ``ValueError`` names a bad line."""
    keys: dict[str, bytes] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not (line := line.split("#", 1)[0].strip()):
            continue
        parts = line.split()
        where = f"resume_keys_file {path}, line {number}"
        if len(parts) != 2:
            raise ValueError(f"{where}: expected '<key id> <hex secret>'")
        key_id, secret = parts
        try:
            raw = bytes.fromhex(secret)
        except ValueError:
            raise ValueError(f"{where}: the secret of key {key_id!r} is not hexadecimal") from None
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(f"{where}: the secret of key {key_id!r} has {len(raw)} bytes, at least "
                             f"{MIN_SECRET_BYTES} are needed (e.g. openssl rand -hex 32)")
        if key_id in keys:
            raise ValueError(f"{where}: key id {key_id!r} appears twice")
        keys[key_id] = raw
    if not keys:
        raise ValueError(f"resume_keys_file {path}: no key in it")
    return keys


@functools.cache
def manifest_sha256(path: Path) -> str:
    return hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()


def arrays_message(arrays: Arrays) -> list[pb.StateArray]:
    return [pb.StateArray(name=name, dtype=array.dtype.str, shape=array.shape, data=array.tobytes())
            for name, array in sorted(arrays.items())]


def message_arrays(messages: list[pb.StateArray], expected: Arrays, field: str) -> Arrays:
    """The state tensors of a token, each of the name, dtype and shape of ``expected`` (a signed token from another
    build that passed every other check would still be refused here)."""
    found = {m.name: m for m in messages}
    if sorted(found) != sorted(expected):
        raise invalid(field, f"its state tensors {sorted(found)} are not this model's {sorted(expected)}")
    arrays = {}
    for name, want in expected.items():
        m = found[name]
        if m.dtype != want.dtype.str or tuple(m.shape) != want.shape or len(m.data) != want.nbytes:
            raise invalid(field, f"state tensor {name!r} is {m.dtype}{list(m.shape)}, the model's is "
                                 f"{want.dtype.str}{list(want.shape)}")
        arrays[name] = np.frombuffer(m.data, dtype=want.dtype).reshape(want.shape).copy()
    return arrays


class ResumeTokens:
    """Makes and checks the resume tokens of one server (``Config.resume_keys_file`` and the limits)."""

    def __init__(self, config: Config) -> None:
        self.keys = read_keys(config.resume_keys_file) if config.resume_keys_file else {}
        self.ttl_s, self.limit = config.resume_token_ttl_s, config.max_resume_token_bytes

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def require(self, field: str) -> None:
        """FAILED_PRECONDITION naming ``field`` (a request for a token) when tokens are off."""
        if not self.enabled:
            raise refused(field, "resume tokens are off on this server (it has no resume_keys_file)")

    def _mac(self, key_id: str, body: bytes) -> bytes:
        return hmac.new(self.keys[key_id], key_id.encode() + b"\0" + body, hashlib.sha256).digest()

    def make(self, model: Model, state: pb.ResumeState) -> bytes:
        """``state`` (its task part and tensors filled in) for ``model``, signed with the current key."""
        state.model, state.version = model.name, model.version
        state.manifest_sha256 = manifest_sha256(model.path)
        state.expires = time.time() + self.ttl_s
        key_id = next(iter(self.keys))
        body = state.SerializeToString()
        token = pb.ResumeToken(key_id=key_id, body=body, mac=self._mac(key_id, body)).SerializeToString()
        if len(token) > self.limit:  # the task limits keep every token far below it; a breach is a bug
            raise RuntimeError(f"a resume token of {len(token)} bytes exceeds max_resume_token_bytes ({self.limit})")
        return token

    def open(self, raw: bytes, repository: Repository, task: str, field: str = "resume_token"
             ) -> tuple[Served, pb.ResumeState]:
        """The model version and state of a token for a stream of ``task``. Each reason to refuse it is its own
        error naming ``field``: tokens off, oversized, undecodable, unknown key, altered (MAC), expired, another
        task, a model version not loaded here or loaded from another manifest."""
        self.require(field)
        if len(raw) > self.limit:
            raise invalid(field, f"{len(raw)} bytes, more than max_resume_token_bytes ({self.limit})")
        try:
            token = pb.ResumeToken.FromString(raw)
        except DecodeError:
            raise invalid(field, "not a resume token (it could not be decoded)") from None
        if token.key_id not in self.keys:
            raise invalid(field, f"signed with key {token.key_id[:40]!r}, which this server does not have "
                                 "(resume_keys_file)")
        if not hmac.compare_digest(token.mac, self._mac(token.key_id, token.body)):
            raise invalid(field, "its MAC does not match: the token was altered or not made by this service")
        state = pb.ResumeState.FromString(token.body)  # signed by us: it decodes
        if (left := state.expires - time.time()) < 0:
            raise refused(field, f"expired {-left:.0f} s ago (resume_token_ttl_s)")
        if state.WhichOneof("stream") != task:
            raise invalid(field, f"a token of a {state.WhichOneof('stream')} stream, this method continues "
                                 f"{task} streams")
        try:
            served = lookup(repository, state.model, state.version, f"{field} model ")
        except RequestError as error:
            raise refused(field, f"{state.model} version {state.version} is not served here ({error.message})"
                          ) from None
        if manifest_sha256(served.model.path) != state.manifest_sha256:
            raise refused(field, f"{state.model} version {state.version} here has another manifest (sha256 "
                                 f"{manifest_sha256(served.model.path)[:12]}…, the token's "
                                 f"{state.manifest_sha256[:12]}…)")
        return served, state

    def freeze(self, model: Model, stream: Resumable, kind: str) -> bytes:
        """A token of ``stream`` (a sentiment ``Stream``, a forecast ``Series`` or a generic model's ``Steps``
        between messages)."""
        state, where = stream.frozen()
        return self.make(model, pb.ResumeState(state=arrays_message(state), **{kind: STATES[kind](**where)}))

    @staticmethod
    def thaw(stream: Resumable, state: pb.ResumeState, field: str = "resume_token") -> None:
        """Set a newly opened ``stream`` to the state of an opened token (``open``)."""
        expected, _ = stream.frozen()
        part = getattr(state, state.WhichOneof("stream"))
        where = {f.name: getattr(part, f.name) for f in part.DESCRIPTOR.fields}
        stream.thaw(message_arrays(list(state.state), expected, field), **where)


class Resumable(Protocol):
    """What ``freeze`` and ``thaw`` need of a stream: its state slot and position as plain values."""

    def frozen(self) -> tuple[Arrays, dict[str, Any]]: ...

    def thaw(self, state: Arrays, **where: Any) -> None: ...


STATES = {"sentiment": pb.SentimentState, "forecast": pb.ForecastState, "stateful": pb.StatefulState}


def same_model(name: str, served: Served, field: str = "model.name") -> None:
    """A resuming request that names a model must name the token's."""
    if name and name != served.model.name:
        raise invalid(field, f"{name[:80]!r} is not the model of the resume token ({served.model.name})")
