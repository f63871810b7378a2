"""TLS and bearer tokens, from the configuration (``docs/server.md``, Security).

TLS uses grpcio's own credentials: the server's certificate chain and key, and optionally a CA
whose certificates clients must present (mTLS). Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

import grpc

from server.config import Config


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials when ``tls_cert`` and ``tls_key`` are set (``None``: plaintext)."""
    if not (config.tls_cert or config.tls_key):
        if config.tls_client_ca:
            raise ValueError("tls_client_ca (client certificates) needs tls_cert and tls_key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("tls_cert and tls_key go together: give both or neither")
    ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    pair = (Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class Tokens:
    """The bearer tokens a call may carry (``authorization: Bearer <token>``); none: every call is allowed."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens = [token.encode() for token in tokens]

    @classmethod
    def from_config(cls, config: Config) -> Tokens:
        """``auth_token`` and the lines of ``auth_tokens_file`` (blank lines and ``#`` comments skipped)."""
        tokens = [config.auth_token] if config.auth_token else []
        if config.auth_tokens_file:
            lines = Path(config.auth_tokens_file).read_text().splitlines()
            tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not tokens:
                raise ValueError(f"auth_tokens_file {config.auth_tokens_file} holds no token")
        return cls(tokens)

    @property
    def required(self) -> bool:
        return bool(self.tokens)

    def allow(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """Whether the call's metadata carries one of the tokens (always, when none is required)."""
        if not self.tokens:
            return True
        for key, value in metadata or ():
            if key == "authorization":
                scheme, _, token = (value.decode() if isinstance(value, bytes) else value).partition(" ")
                given = token.strip().encode()
                if scheme.lower() == "bearer" and any(hmac.compare_digest(given, t) for t in self.tokens):
                    return True
        return False
