"""Real servers for the tests, and what the tests read from them.

``Running`` is a ``Server`` on its own event loop in this process; ``Process`` is ``python -m server``
(signals, start-up errors, load that must not share this process's GIL). ``certificates`` makes a
CA, a server certificate and a client certificate for TLS tests.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.repository import Model, load_model
from server.app import Server
from server.config import Config

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("SEQSERVE_TEST_MODELS", ROOT / "models"))
CONFIG = Config(models=str(MODELS), host="127.0.0.1", port=0, metrics_port=0, max_streams=80, idle_timeout_s=2.0,
                max_text_chars=500, max_texts=8, max_horizon=24, grace_s=1.0, drain_s=0.0)


def sentiment_limited(max_tokens: int) -> Path:
    """A repository like ``MODELS`` whose sentiment models read at most ``max_tokens`` tokens (copied, their manifests
    rewritten; the other models linked), in a temporary folder removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="seqserve-models-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for model in MODELS.iterdir():
        if model.name != "sentiment":
            (root / model.name).symlink_to(model.resolve())
            continue
        for version in model.iterdir():
            shutil.copytree(version, root / model.name / version.name)
            manifest_path = root / model.name / version.name / "manifest.json"
            manifest = json.loads(manifest_path.read_text())
            manifest["preprocessing"]["max_tokens"] = max_tokens
            manifest_path.write_text(json.dumps(manifest))
    return root


def newest(name: str) -> Model:
    """The version of model ``name`` that a request without a version gets (the newest)."""
    return load_model(max((MODELS / name).iterdir(), key=lambda path: int(path.name)))


def newest_translation() -> Model:
    return newest("translation")


def sentiment_stream_graph() -> str:
    """The graph that the newest sentiment version's streams run (``chunk``, or a version 1's ``step``)."""
    return newest("sentiment").manifest.preprocessing.stream_graph


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Metrics:
    """The ``/metrics`` page of a server."""

    url: str
    context: ssl.SSLContext | None = None

    def metrics(self) -> str:
        return urllib.request.urlopen(self.url, context=self.context, timeout=10).read().decode()

    def sample(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` with ``labels`` (0 when there is none)."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.metrics().splitlines()
                   if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))

    def wait_for_sample(self, name: str, value: float, timeout: float = 10.0, **labels: str) -> bool:
        return wait_for(lambda: self.sample(name, **labels) == value, timeout)

    def idle(self) -> bool:
        """No active stream and no state slot held, by the gauges."""
        return self.sample("seqserve_active_streams") == 0 and self.sample("seqserve_stream_slots_in_use") == 0


class Running(Metrics):
    """A ``Server`` on its own event loop in a background thread."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Server = self.call(self._start(config))
        self.target = f"127.0.0.1:{self.server.port}"
        self.url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    async def _start(self, config: Config) -> Server:
        server = Server(config)
        await server.start()
        return server

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def in_use(self) -> int:
        return sum(graph.slots.in_use for served in self.server.served for graph in served.runner.graphs.values()
                   if graph.slots)

    def stop(self) -> None:
        self.call(self.server.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


SERVING = re.compile(r"serving .* on [\d.]+:(\d+) \((TLS|plaintext)\), metrics on \S+:(\d+|None)")


class Process(Metrics):
    """``python -m server`` on free ports with ``flags`` (after the tests' own), its log lines kept in ``lines``."""

    def __init__(self, *flags: str, startup_s: float = 120.0) -> None:
        command = [sys.executable, "-m", "server", "--models", str(MODELS), "--port", "0", "--metrics-port", "0",
                   "--log-level", "INFO", *flags]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not wait_for(lambda: any(SERVING.search(line) for line in self.lines) or self.process.poll() is not None,
                        startup_s):
            self.kill()
            raise RuntimeError("the server did not start:\n" + "\n".join(self.lines[-20:]))
        found = next((SERVING.search(line) for line in self.lines if SERVING.search(line)), None)
        if found is None:
            raise RuntimeError(f"the server exited with {self.process.poll()}:\n" + "\n".join(self.lines[-20:]))
        self.port, self.tls = int(found.group(1)), found.group(2) == "TLS"
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{found.group(3)}/metrics"

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait(10)

    def stop(self) -> None:
        """SIGTERM, or a kill if it has not stopped within 60 s."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate (localhost, 127.0.0.1) and a client certificate, both signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def certificates(folder: Path, ca_name: str = "seqserve test CA") -> Certificates:
    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
              extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(1)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(signer, hashes.SHA256())

    def write(name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return folder / f"{name}.pem", folder / f"{name}.key"

    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = issue(ca_name, ca_key, ca_subject, ca_key, [(x509.BasicConstraints(ca=True, path_length=None), True)])
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = issue("localhost", server_key, ca_subject, ca_key,
                   [(names, False), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    client = issue("test client", client_key, ca_subject, ca_key,
                   [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    ca_path, _ = write("ca", ca_key, ca)
    return Certificates(ca_path, *write("server", server_key, server), *write("client", client_key, client))
