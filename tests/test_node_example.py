"""The Node example (``examples/node/``: @grpc/grpc-js and @grpc/proto-loader from npm) against a real server.

Runs when ``node`` and ``npm`` are on the PATH: ``npm ci`` installs the locked packages into
``examples/node/node_modules`` (once; git-ignored), then ``translate.js`` must print the tokens that
``Translate`` streams, and the same translation as ``TranslateBatch``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Running

from client import Client
from server.config import Config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "node"
TEXT = "Click the Save button to save the document."
pytestmark = [
    pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="node and npm are not installed"),
    pytest.mark.skipif(not (ROOT / "models" / "translation").is_dir(), reason="no translation model"),
]


@pytest.fixture(scope="module")
def installed() -> None:
    """``npm ci`` when ``node_modules`` is missing or older than the lock file."""
    stamp = EXAMPLE / "node_modules" / ".package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < (EXAMPLE / "package-lock.json").stat().st_mtime:
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, timeout=600, capture_output=True,
                              text=True)
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    running = Running(Config(models=str(ROOT / "models"), host="127.0.0.1", port=0, metrics_port=-1))
    yield running
    running.stop()


def node(*args: str) -> str:
    done = subprocess.run(["node", str(EXAMPLE / "translate.js"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_node_example_prints_the_translation_token_by_token(installed: None, running: Running) -> None:
    with Client(running.target, timeout=60) as client:
        expected = [(t.token_id, t.piece) for t in client.translate_tokens(TEXT)]
        whole = client.translate_batch([TEXT]).translations[0].text
    lines = node("--server", running.target, "--tokens", TEXT).splitlines()
    assert [(int(line.split("\t")[0]), json.loads(line.split("\t")[2])) for line in lines] == expected
    assert node("--server", running.target, TEXT) == whole + "\n"
    failed = subprocess.run(["node", str(EXAMPLE / "translate.js"), "--server", running.target, "--model", "nope",
                             TEXT], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "NOT_FOUND: model.name 'nope' is not loaded" in failed.stderr
