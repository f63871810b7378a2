"""Server configuration: defaults < a JSON file < ``SEQSERVE_*`` environment variables < flags.

Every option is a field of ``Config``; its environment variable is ``SEQSERVE_`` plus the
upper-cased name (``SEQSERVE_MAX_BATCH=32``) and its flag is ``--max-batch 32``. The file
(``--config path`` or ``SEQSERVE_CONFIG``) is a JSON object with the same names.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    models: str = "models"  # the model repository (docs/manifest.md)
    host: str = "0.0.0.0"
    port: int = 50051  # gRPC; 0 picks a free port
    metrics_port: int = 9100  # Prometheus /metrics over HTTP; 0 picks a free port, -1 disables
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
    # A KServe sequence (sequence_id) with no request for this long is ended and its state freed
    # (Triton's max_sequence_idle_microseconds).
    sequence_idle_timeout_s: float = 60.0
    grace_s: float = 10.0  # on SIGTERM, open streams get this long to finish
    max_texts: int = 256  # texts per Classify / TranslateBatch
    max_text_chars: int = 5000  # characters per text or chunk
    max_stream_tokens: int = 2048  # tokens per StreamSentiment stream
    max_history: int = 10000  # values per forecast history
    max_horizon: int = 120  # forecast steps per request
    max_decode_len: int = 200  # translation output tokens
    max_beam: int = 8
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json" (one object per line, for log collectors)


FIELDS = {f.name: f for f in fields(Config)}

# What each option does, for --help (which adds its environment variable and default). The reasons
# for the defaults are in the comments above and in docs/server.md.
HELP = {
    "models": "the model repository: a folder of <name>/<version>/manifest.json (docs/manifest.md)",
    "host": "the gRPC listen address (0.0.0.0: every interface, as a container needs)",
    "port": "the gRPC port (0: a free one, logged at start)",
    "metrics_port": "the Prometheus /metrics HTTP port (0: a free one, -1: no metrics endpoint)",
    "providers": "ONNX Runtime execution providers: auto (CUDA when this ONNX Runtime has it, else CPU) or a comma "
                 "list such as CUDAExecutionProvider,CPUExecutionProvider",
    "intra_op_threads": "ONNX Runtime threads inside one graph run, per session",
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
    "grace_s": "seconds open streams get to finish after SIGTERM or SIGINT before they are cancelled",
    "max_texts": "texts per Classify or TranslateBatch request",
    "max_text_chars": "characters per text, or per chunk of a stream",
    "max_stream_tokens": "tokens per StreamSentiment stream",
    "max_history": "values per forecast history",
    "max_horizon": "forecast steps per request",
    "max_decode_len": "translation output tokens at most",
    "max_beam": "the widest beam a translation request may ask for",
    "log_level": "Python logging level: DEBUG, INFO, WARNING or ERROR",
    "log_format": "log lines as text, or json: one JSON object per line (time, level, logger, message)",
}
LOG_FORMATS = ("text", "json")


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
    return replace(config, **{name: _coerce(name, value) for name, value in values.items()})


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
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
