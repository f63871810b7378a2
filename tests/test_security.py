"""TLS (with certificates made here), mTLS, bearer tokens, reflection off and localhost defaults."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from servers import CONFIG, MODELS, Certificates, Running, certificates

from client import Client
from client.__main__ import main as cli
from server.config import Config
from server.logs import summary

pytestmark = pytest.mark.skipif(not (MODELS / "sentiment").is_dir(), reason=f"no sentiment model in {MODELS}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return certificates(tmp_path_factory.mktemp("certs"))


def https(running: Running, certs: Certificates, client_cert: bool) -> None:
    """The metrics page over TLS, trusting ``certs.ca``."""
    context = ssl.create_default_context(cafile=certs.ca)
    if client_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    running.context, running.url = context, running.url.replace("http://", "https://")


def refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as error:
        call()
    assert error.value.code() == code, error.value
    return error.value.details() or ""


def test_tls(certs: Certificates, tmp_path: Path) -> None:
    running = Running(replace(CONFIG, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key)))
    try:
        with Client(running.target, timeout=10, ca=str(certs.ca)) as client:
            assert client.health() == "SERVING" and client.classify(["A fine film."]).results
        with Client(running.target, timeout=3) as plaintext:
            refused(plaintext.health, grpc.StatusCode.UNAVAILABLE)
        other = certificates(tmp_path / "other", "another CA")
        with Client(running.target, timeout=3, ca=str(other.ca)) as untrusting:
            refused(untrusting.health, grpc.StatusCode.UNAVAILABLE)
        https(running, certs, client_cert=False)
        assert "seqserve_requests_total" in running.metrics()
    finally:
        running.stop()


def test_mtls(certs: Certificates) -> None:
    running = Running(replace(CONFIG, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key),
                              tls_client_ca=str(certs.ca)))
    try:
        mutual = {"ca": str(certs.ca), "cert": str(certs.client_cert), "key": str(certs.client_key)}
        with Client(running.target, timeout=10, **mutual) as client:
            assert client.health() == "SERVING" and client.classify(["A fine film."]).results
        with Client(running.target, timeout=3, ca=str(certs.ca)) as anonymous:
            refused(anonymous.health, grpc.StatusCode.UNAVAILABLE)
        https(running, certs, client_cert=False)
        with pytest.raises(OSError):  # URLError, or with TLS 1.3 the alert read after the handshake: SSLError
            running.metrics()
        https(running, certs, client_cert=True)
        assert "seqserve_requests_total" in running.metrics()
    finally:
        running.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text("# one token a line\nfirst-token\n\n  second-token  \n")
    running = Running(replace(CONFIG, auth_token="the-token", auth_tokens_file=str(tokens), reflection=False))
    yield running
    running.stop()


def test_tokens_are_required_on_every_call_but_health(guarded: Running) -> None:
    with Client(guarded.target, timeout=10) as anonymous:
        assert anonymous.health() == "SERVING"  # probes need no token
        for call in (lambda: anonymous.classify(["A fine film."]), anonymous.list_models,
                     lambda: list(anonymous.stream_sentiment(["good"])), lambda: list(anonymous.translate("Hi."))):
            assert "authorization: Bearer <token>" in refused(call, grpc.StatusCode.UNAUTHENTICATED)
    with Client(guarded.target, timeout=10, token="wrong-token") as wrong:
        refused(lambda: wrong.classify(["A fine film."]), grpc.StatusCode.UNAUTHENTICATED)
    for token in ("the-token", "first-token", "second-token"):
        with Client(guarded.target, timeout=10, token=token) as client:
            assert client.classify(["A fine film."]).results and client.list_models()
            assert [u.token for u in client.stream_sentiment(["a good film"])] == ["a", "good", "film"]
    assert guarded.sample("seqserve_requests_total", method="Classify", code="UNAUTHENTICATED") == 2
    assert guarded.idle()


def test_reflection_can_be_turned_off(guarded: Running) -> None:
    with Client(guarded.target, timeout=10, token="the-token") as client:
        stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        refused(lambda: list(stub.ServerReflectionInfo(iter([request]))), grpc.StatusCode.UNIMPLEMENTED)


def test_the_cli_speaks_tls_with_a_token(certs: Certificates, capsys: pytest.CaptureFixture[str]) -> None:
    running = Running(replace(CONFIG, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key),
                              auth_token="cli-token"))
    try:
        cli(["--server", running.target, "--ca", str(certs.ca), "--token", "cli-token", "models"])
        assert "sentiment/" in capsys.readouterr().out
        with pytest.raises(SystemExit, match="UNAUTHENTICATED"):
            cli(["--server", running.target, "--ca", str(certs.ca), "models"])
    finally:
        running.stop()


def test_both_ports_default_to_localhost() -> None:
    assert (Config().host, Config().metrics_host) == ("127.0.0.1", "127.0.0.1")
    running = Running(replace(CONFIG, host=Config.host, metrics_host=Config.metrics_host))
    try:
        assert running.server.metrics.http.server_address[0] == "127.0.0.1"
        assert running.metrics()
    finally:
        running.stop()


def test_the_start_up_summary_hides_the_token() -> None:
    line = summary(replace(CONFIG, auth_token="very-secret"), [])[-1]
    assert "auth_token=<secret>" in line and "very-secret" not in line
