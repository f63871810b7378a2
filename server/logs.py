"""Logging: text or JSON lines (``log_format``), and the summary the server logs when it starts."""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata

from server.config import SECRETS, Config
from server.repository import Served

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
VERSIONS = ("seqserve", "onnxruntime", "grpcio", "numpy")  # distributions named in the summary


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, for an
    exception, ``exception`` (its traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """The root logger at ``level``, to stderr, as ``text`` or ``json`` lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=level, handlers=[handler])


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "not installed"


def summary(config: Config, served: list[Served]) -> list[str]:
    """What this process serves and how: versions, each model version with its graphs, provider and
    stream slots, and the effective configuration (defaults, file, environment and flags applied; secrets
    hidden)."""
    lines = [f"python {platform.python_version()}, " + ", ".join(f"{name} {_version(name)}" for name in VERSIONS)]
    for one in served:
        model, graphs = one.model, one.runner.graphs
        slots = [f"{name} {graph.slots.capacity}" for name, graph in graphs.items() if graph.slots]
        lines.append(f"model {model.name}/{model.version} ({model.task}): graphs {', '.join(graphs)} on "
                     f"{', '.join(one.runner.providers)}; stream slots: {', '.join(slots) or 'none'}")
    shown = {name: "<secret>" if name in SECRETS and value else value for name, value in asdict(config).items()}
    lines.append("configuration: " + " ".join(f"{name}={value}" for name, value in shown.items()))
    return lines
