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
    # Resume tokens (docs/server.md): '<key id> <hex secret>' lines, the first signs; none: tokens are off.
    resume_keys_file: str = ""
    resume_token_ttl_s: float = 3600.0  # how long a resume token is accepted after it was made
    max_resume_token_bytes: int = 65536  # a longer resume token is refused unread
    reflection: bool = True  # grpc.reflection.v1alpha.ServerReflection
    providers: str = "auto"  # "auto" (CUDA when present, else CPU) or a comma list of ORT providers
    # Server processes on one port (SO_REUSEPORT), each with its own streams and engine; 1: one process, no
    # supervisor (server/workers.py, docs/server.md "Workers").
    workers: int = 1
    intra_op_threads: int = 2  # 2 measured best for one step on 2 cores; with workers, split among them
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
    # A KServe sequence (sequence_id) with no request for this long is ended and its state freed
    # (Triton's max_sequence_idle_microseconds).
    sequence_idle_timeout_s: float = 60.0
    write_timeout_s: float = 30.0  # a stream whose client takes no message for this long is ended
    max_stream_age_s: float = 600.0  # any call (health aside) older than this is ended
    drain_s: float = 2.0  # on SIGTERM, health says NOT_SERVING this long before calls are refused
    grace_s: float = 10.0  # then open calls get this long to finish
    max_texts: int = 256  # texts per Classify / TranslateBatch
    # A whole review: the longest text of the long-text set has 48,000 (docs/sentiment.md). Its tokens are
    # limited by the model's manifest (max_tokens).
    max_text_chars: int = 50_000  # characters per text or chunk
    max_token_chars: int = 100  # StreamSentiment: a longer token (an unknown word) is cut
    # The sequence graph took about 10 KB per padded token (rows x longest text) on CPU: 65,536 is about
    # 650 MB, five 50,000-character reviews in one run (docs/sentiment.md).
    max_batch_tokens: int = 65_536  # Classify: padded tokens per run of one request's texts
    # gRPC's own default, stated: 80 reviews of 50,000 characters per Classify (docs/server.md, Limits).
    max_message_bytes: int = 4 * 1024 * 1024  # largest request message a client may send
    max_history: int = 10000  # values per forecast history
    max_horizon: int = 120  # forecast steps per request
    max_decode_len: int = 200  # translation output tokens
    max_beam: int = 8
    # Hot reload: how often the model repository is scanned for new and removed versions (0: only the Models.Reload
    # call scans it). A scan that finds nothing new costs a few stat calls.
    reload_interval_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json" (one object per line, for log collectors)

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
    "workers": (1, 1024),
    "max_batch": (1, None), "max_wait_ms": (0, 1000), "max_streams": (1, None), "max_queue": (1, None),
    "idle_timeout_s": (0.001, None), "sequence_idle_timeout_s": (0.001, None), "write_timeout_s": (0.001, None),
    "max_stream_age_s": (0.001, None),
    "drain_s": (0, None), "grace_s": (0, None), "max_texts": (1, None), "max_text_chars": (1, None),
    "max_token_chars": (1, None), "max_batch_tokens": (1, None), "max_message_bytes": (1024, 2**31 - 1),
    "max_history": (1, None), "max_horizon": (1, None),
    "max_decode_len": (1, None), "max_beam": (1, None), "reload_interval_s": (0, 86400),
    "resume_token_ttl_s": (1, None), "max_resume_token_bytes": (1024, None),
}
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


FIELDS = {f.name: f for f in fields(Config)}

# What each option does, for --help (which adds its environment variable and default). The reasons
# for the defaults are in the comments above and in docs/server.md.
HELP = {
    "models": "the model repository: a folder of <name>/<version>/manifest.json (docs/manifest.md)",
    "host": "the gRPC listen address (0.0.0.0: every interface, as a container needs; the image passes it)",
    "port": "the gRPC port (0: a free one, logged at start)",
    "metrics_host": "the /metrics listen address (0.0.0.0: every interface; the image passes it)",
    "metrics_port": "the Prometheus /metrics HTTP port (0: a free one, -1: no metrics endpoint)",
    "tls_cert": "PEM certificate chain of the server: with tls_key, TLS on gRPC and /metrics",
    "tls_key": "PEM private key of tls_cert",
    "tls_client_ca": "PEM CA bundle: clients must present a certificate it signed (mTLS, gRPC and /metrics)",
    "auth_token": "a bearer token every call but health must carry (authorization: Bearer <token>); prefer the "
                  "environment variable to the flag",
    "auth_tokens_file": "a file of bearer tokens, one a line (# comments), any of which a call may carry",
    "resume_keys_file": "resume-token keys, one '<key id> <hex secret of 32+ bytes>' a line (# comments): the first "
                        "signs, all verify; the same file on every replica; unset: resume tokens are off",
    "resume_token_ttl_s": "seconds a resume token is accepted after it was made",
    "max_resume_token_bytes": "the longest resume token a request may carry (INVALID_ARGUMENT beyond it)",
    "reflection": "serve grpc.reflection.v1alpha (true/false)",
    "providers": "ONNX Runtime execution providers: auto (CUDA when this ONNX Runtime has it, else CPU) or a comma "
                 "list such as CUDAExecutionProvider,CPUExecutionProvider",
    "workers": "server processes sharing the gRPC port (SO_REUSEPORT), each with its own streams and engine, "
               "under one supervisor that serves /metrics for all (1: a single process)",
    "intra_op_threads": "ONNX Runtime threads inside one graph run, per session; with workers, each worker gets "
                        "intra_op_threads / workers (at least 1; 0: the machine's cores)",
    "inter_op_threads": "ONNX Runtime threads across independent nodes, per session",
    "max_batch": "rows (streams) per batched step of a graph",
    "max_wait_ms": "how long a batch waits for more steps once one is ready (0: run what is queued at once)",
    "ort_spinning": "let ONNX Runtime's threads spin-wait between runs (true/false); costs CPU on few cores",
    "cuda_tf32": "TF32 matrix products on CUDA (true/false); on, batched results differ from solo ones",
    "max_streams": "open streams (state slots) per model version; a stream beyond it gets RESOURCE_EXHAUSTED",
    "max_queue": "steps waiting per graph before new ones get RESOURCE_EXHAUSTED",
    "idle_timeout_s": "seconds a bidirectional stream may stay silent before it is ended (DEADLINE_EXCEEDED)",
    "sequence_idle_timeout_s": "seconds a KServe sequence (sequence_id) may go without a request before it is "
                               "ended and its state freed (Triton's max_sequence_idle_microseconds)",
    "write_timeout_s": "seconds a stream's client may take no message before the stream is ended (DEADLINE_EXCEEDED)",
    "max_stream_age_s": "seconds any call but health may last before it is ended (DEADLINE_EXCEEDED)",
    "drain_s": "seconds health says NOT_SERVING after SIGTERM or SIGINT, still serving, before calls are refused",
    "grace_s": "seconds open calls then get to finish before they are ended with UNAVAILABLE",
    "max_texts": "texts per Classify or TranslateBatch request",
    "max_text_chars": "characters per text, or per chunk of a stream",
    "max_token_chars": "StreamSentiment: a longer token (an unknown word) is cut; more than any vocabulary word",
    "max_batch_tokens": "Classify: padded tokens (texts x the longest one's tokens) per graph run of one request; "
                        "its texts run shortest first in groups within it (tokens per text: the manifest's max_tokens)",
    "max_message_bytes": "the largest request message in bytes (gRPC's max receive length); a larger one gets "
                         "RESOURCE_EXHAUSTED",
    "max_history": "values per forecast history",
    "max_horizon": "forecast steps per request",
    "max_decode_len": "translation output tokens at most",
    "max_beam": "the widest beam a translation request may ask for",
    "reload_interval_s": "seconds between scans of the model repository for new and removed versions (hot reload; "
                         "0: only the Models.Reload call scans it)",
    "log_level": "Python logging level: DEBUG, INFO, WARNING or ERROR, in any case",
    "log_format": "log lines as text, or json: one JSON object per line (time, level, logger, message)",
}
LOG_FORMATS = ("text", "json")
SECRETS = {"auth_token"}  # never logged


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
    parser = argparse.ArgumentParser(
        prog="python -m server", description="seqserve: streaming gRPC inference for recurrent ONNX models.",
        epilog="Each option is read from, in increasing precedence: its default, the JSON file (--config), its "
               "environment variable, its flag. Health: grpc.health.v1 reports SERVING once every model is warmed "
               "up. Details: docs/server.md.")
    parser.add_argument("--config", metavar="FILE", default=environ.get("SEQSERVE_CONFIG"),
                        help="a JSON object of options by name, e.g. {\"max_batch\": 64} (env SEQSERVE_CONFIG)")
    for name, field in FIELDS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                            metavar=type(field.default).__name__.upper(),
                            help=f"{HELP[name]} (env SEQSERVE_{name.upper()}; default {field.default})")
    args = vars(parser.parse_args(argv))
    config = Config()
    if path := args.pop("config"):
        config = _apply(config, json.loads(Path(path).read_text()), path)
    env = {name: environ[f"SEQSERVE_{name.upper()}"] for name in FIELDS if f"SEQSERVE_{name.upper()}" in environ}
    config = _apply(config, env, "environment")
    config = _apply(config, {k: v for k, v in args.items() if v is not None}, "flags")
    if config.log_format not in LOG_FORMATS:
        raise ValueError(f"config 'log_format': {config.log_format!r} is not one of {list(LOG_FORMATS)}")
    return config
