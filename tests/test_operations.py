"""What an operator sees: ``--help``, the startup summary and JSON log lines of a real server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from server.config import FIELDS, HELP, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_help_explains_every_option_and_names_its_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(HELP) == set(FIELDS), "every Config field needs a HELP entry"
    with pytest.raises(SystemExit) as done:
        load_config(["--help"], {})
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in FIELDS:
        flag, variable = f"--{name.replace('_', '-')}", f"SEQSERVE_{name.upper()}"
        assert flag in text and f"(env {variable}; default {FIELDS[name].default})" in text, name
        assert " ".join(HELP[name].split()) in text, name
    assert "SEQSERVE_CONFIG" in text


def test_log_format_must_be_text_or_json() -> None:
    assert load_config([], {"SEQSERVE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ValueError, match="'log_format': 'xml' is not one of"):
        load_config(["--log-format", "xml"], {})


def test_json_logs_and_startup_summary() -> None:
    """``python -m server --log-format json``: every line is one JSON object; the summary names each model
    version, its provider and slots and the effective configuration; SIGTERM stops it cleanly."""
    # ONNX Runtime's native logger writes its own text lines (its telemetry warns where $HOME is read-only);
    # the image turns its telemetry off the same way (Dockerfile).
    env = os.environ | {"SEQSERVE_MAX_STREAMS": "7", "ORT_DISABLE_TELEMETRY": "1"}
    process = subprocess.Popen([sys.executable, "-m", "server", "--models", str(ROOT / "models"), "--port", "0",
                                "--metrics-port", "-1", "--log-format", "json"], cwd=ROOT, env=env,
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if "SERVING" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert serving.wait(60), "".join(lines)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        reader.join(10)
    assert code == 0, "".join(lines)
    records = [json.loads(line) for line in lines]
    assert all(set(r) == {"time", "level", "logger", "message"} for r in records)
    messages = [r["message"] for r in records]
    assert "model sentiment/1 (sentiment): graphs sequence, step on CPUExecutionProvider; stream slots: step 7" \
        in messages
    configuration = next(m for m in messages if m.startswith("configuration: "))
    assert "max_streams=7" in configuration and "log_format=json" in configuration
    assert messages[-1] == "stopped"
