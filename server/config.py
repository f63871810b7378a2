"""Server configuration: defaults < a JSON file < ``SEQSERVE_*`` environment variables < flags.

Every option is a field of ``Config``; its environment variable is ``SEQSERVE_`` plus the
upper-cased name (``SEQSERVE_MAX_BATCH=32``) and its flag is ``--max-batch 32``. The file
(``--config path`` or ``SEQSERVE_CONFIG``) is a JSON object with the same names.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    models: str = "models"  # the model repository (docs/manifest.md)
    # Addresses: localhost unless told otherwise; a container or cluster passes 0.0.0.0 (the Dockerfile does).
    host: str = "127.0.0.1"
    port: int = 50051  # gRPC; 0 picks a free port
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100  # Prometheus /metrics over HTTP; 0 picks a free port, -1 disables
    # TLS: a PEM certificate chain and its key; with a CA bundle, clients must present a certificate it signed (mTLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Bearer tokens (``authorization: Bearer <token>``) required on every RPC but health: one token, and/or a
    # file of them (one per line, # comments). Neither: no authentication.
    auth_token: str = ""
    auth_tokens_file: str = ""
    reflection: bool = True  # grpc.reflection.v1alpha.ServerReflection
    providers: str = "auto"  # "auto" (CUDA when present, else CPU) or a comma list of ORT providers
    intra_op_threads: int = 2  # 2 measured best for one step on 2 cores
    inter_op_threads: int = 1
    # Rows per batched step. At 256 translation streams, 256 beat 64 on the 2-core CPU (4,738 vs 3,807
    # tokens/s) and on an H100 (8,502 vs 6,705): bigger steps cost less per row (bench/RESULTS.md).
    max_batch: int = 256
    # How long a step waits for more streams once one is ready. 0 runs whatever is queued at
    # once: on 2 cores it beat 2 ms at every concurrency measured (bench/RESULTS.md).
    max_wait_ms: float = 0.0
    # ONNX Runtime's intra-op threads spin-wait between runs by default; on few cores that takes
    # CPU from the event loop (off measured 26-62 % less CPU per token, bench/RESULTS.md).
    ort_spinning: bool = False
    # TF32 matrix products on CUDA (ONNX Runtime's default) changed a stream's log-probabilities by
    # up to 1.4e-3 between batch sizes on an H100 (bench/results/cuda-h100-tf32-on/tests.log): off, batching does
    # not change results.
    cuda_tf32: bool = False
    max_streams: int = 256  # open streams (state slots) per model version
    max_queue: int = 1024  # pending steps per graph before RESOURCE_EXHAUSTED
    idle_timeout_s: float = 60.0  # a bidirectional stream with no message for this long is ended
    write_timeout_s: float = 30.0  # a stream whose client takes no message for this long is ended
    max_stream_age_s: float = 600.0  # any call (health aside) older than this is ended
    drain_s: float = 2.0  # on SIGTERM, health says NOT_SERVING this long before calls are refused
    grace_s: float = 10.0  # then open calls get this long to finish
    max_texts: int = 256  # texts per Classify / TranslateBatch
    max_text_chars: int = 5000  # characters per text or chunk
    max_token_chars: int = 100  # StreamSentiment: a longer token (an unknown word) is cut
    max_stream_tokens: int = 2048  # tokens per StreamSentiment stream
    max_history: int = 10000  # values per forecast history
    max_horizon: int = 120  # forecast steps per request
    max_decode_len: int = 200  # translation output tokens
    max_beam: int = 8
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        """Every numeric option in its range, the log level known (in any case): ``ValueError`` names the option."""
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if not (low <= value and (high is None or value <= high)):  # also false for NaN
                bound = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ValueError(f"{name} is {value}, it must be {bound}")
        level = self.log_level.upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError(f"log_level is {self.log_level!r}, it must be one of {LOG_LEVELS} (any case)")
        object.__setattr__(self, "log_level", level)


# Every numeric option's range (low, high; None: no upper bound); tests check that none is missing.
RANGES: dict[str, tuple[float, float | None]] = {
    "port": (0, 65535), "metrics_port": (-1, 65535), "intra_op_threads": (0, 1024), "inter_op_threads": (0, 1024),
    "max_batch": (1, None), "max_wait_ms": (0, 1000), "max_streams": (1, None), "max_queue": (1, None),
    "idle_timeout_s": (0.001, None), "write_timeout_s": (0.001, None), "max_stream_age_s": (0.001, None),
    "drain_s": (0, None), "grace_s": (0, None), "max_texts": (1, None), "max_text_chars": (1, None),
    "max_token_chars": (1, None), "max_stream_tokens": (1, None), "max_history": (1, None), "max_horizon": (1, None),
    "max_decode_len": (1, None), "max_beam": (1, None),
}
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


FIELDS = {f.name: f for f in fields(Config)}


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _coerce(name: str, value: Any) -> Any:
    kind = type(getattr(Config, name))
    if kind is bool and isinstance(value, str):
        if value.lower() not in BOOLEANS:
            raise ValueError(f"config {name!r}: {value!r} is not a bool (true/false, 1/0, yes/no, on/off)")
        return BOOLEANS[value.lower()]
    try:
        return kind(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config {name!r}: {value!r} is not a {kind.__name__}") from error


def _apply(config: Config, values: Mapping[str, Any], where: str) -> Config:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown options {unknown} (known: {sorted(FIELDS)})")
    try:
        return replace(config, **{name: _coerce(name, value) for name, value in values.items()})
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The options from a JSON file, the environment and ``argv``; ``ValueError`` names a wrong one and where it came
    from."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m server", description="seqserve gRPC server")
    parser.add_argument("--config", default=environ.get("SEQSERVE_CONFIG"), help="JSON file of options")
    for name, field in FIELDS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=f"default {field.default!r}")
    args = vars(parser.parse_args(argv))
    config = Config()
    if path := args.pop("config"):
        config = _apply(config, json.loads(Path(path).read_text()), path)
    env = {name: environ[f"SEQSERVE_{name.upper()}"] for name in FIELDS if f"SEQSERVE_{name.upper()}" in environ}
    config = _apply(config, env, "environment")
    return _apply(config, {k: v for k, v in args.items() if v is not None}, "flags")
