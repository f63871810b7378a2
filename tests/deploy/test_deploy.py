"""``make test-deploy``: the image, run as deploy/README.md says, with real Podman, Prometheus and promtool.

Run by ``deploy/test-deploy.sh``, which installs what this needs, builds the image (``make image``) and
chooses Podman's settings (``deploy/engine.sh``); the containers it starts are removed however a test ends.
Every address it talks to is on 127.0.0.1 or inside a container (``podman exec``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from client import Client

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
IMAGE = os.environ.get("SEQSERVE_IMAGE", "seqserve:latest")
MAX_IMAGE_BYTES = 300e6  # the goal (deploy/README.md)
NAME = f"seqserve-deploy-test-{os.getpid()}"
SENTENCE, GERMAN = "The file could not be opened.", "Die Datei konnte nicht geöffnet werden."
HISTORY = [2157.3, 1953.8, 2108.1, 2056.4, 2173.1, 2105.2, 2203.5, 2199.9, 2159.6, 2310.5, 2293.4, 2642.4] * 6
pytestmark = pytest.mark.deploy


def run(*command: str, timeout: float = 300, check: bool = True, **options) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **options)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def podman(*args: str, **options) -> subprocess.CompletedProcess[str]:
    return run("podman", *args, **options)


def report(what: str, value: str) -> None:
    """A measured number for test-deploy's closing summary (deploy/test-deploy.sh prints them)."""
    if path := os.environ.get("SEQSERVE_DEPLOY_REPORT"):
        with open(path, "a") as out:
            out.write(f"{what}: {value}\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli(target: str, *args: str, stdin: str | None = None) -> str:
    """The client CLI, as the README runs it."""
    return run(sys.executable, "-m", "client", "--server", target, "--timeout", "60", *args, cwd=ROOT,
               input=stdin).stdout


def wait_until(condition: Callable[[], bool], timeout: float, pause: float = 0.1) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(pause)
    return time.monotonic() - started


def serving(target: str) -> bool:
    try:
        with Client(target, timeout=1) as client:
            return client.health() == "SERVING"
    except grpc.RpcError:
        return False


def traffic(target: str, streams: int = 8) -> None:
    """Some of every kind, concurrently: streamed translations and sentiment, forecasts, refused requests."""
    def one(index: int) -> None:
        with Client(target, timeout=60) as client:
            list(client.translate(f"{SENTENCE} Click the Save button to save the document number {index}."))
            list(client.stream_sentiment(["A wonderful, moving ", "film with a great cast."]))
            list(client.forecast(HISTORY, 6, quantiles=[0.1, 0.5, 0.9], start_month=1))
            with pytest.raises(grpc.RpcError):
                client.classify([""])  # INVALID_ARGUMENT: an error code for the dashboard

    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(one, range(streams)))


@dataclass
class Container:
    name: str
    target: str  # gRPC, host:port
    metrics: str  # http://host:port/metrics


def start(name: str, *extra: str) -> Container:
    grpc_port, metrics_port = free_port(), free_port()
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{grpc_port}:50051", "-p", f"127.0.0.1:{metrics_port}:9100",
           *extra, IMAGE)
    return Container(name, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics")


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    """`podman run -p …` of the image, timed from the run to SERVING through the published port."""
    started = time.monotonic()
    running = start(NAME)
    try:
        wait_until(lambda: serving(running.target), 60)
        report("container: podman run to SERVING", f"{time.monotonic() - started:.1f} s")
        yield running
    finally:
        podman("rm", "-f", "-t", "0", NAME, check=False)


def test_image_is_slim_non_root_and_has_no_torch() -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    report("image size", f"{size / 1e6:.0f} MB")
    assert size < MAX_IMAGE_BYTES, f"the image has {size / 1e6:.0f} MB, the goal is under {MAX_IMAGE_BYTES / 1e6:.0f}"
    assert podman("image", "inspect", "--format", "{{.User}}", IMAGE).stdout.strip() == "10001:10001"
    healthcheck = json.loads(podman("image", "inspect", "--format", "{{json .HealthCheck}}", IMAGE).stdout)
    assert healthcheck["Test"][1:4] == ["python", "-m", "client"] and healthcheck["Test"][-1] == "health"
    found = podman("run", "--rm", "--entrypoint", "python", IMAGE, "-c",
                   "import importlib.util as u; print([n for n in ('torch', 'grpc_tools') if u.find_spec(n)])").stdout
    assert found.strip() == "[]", f"the runtime image holds {found}"


def test_healthcheck_passes(container: Container) -> None:
    podman("healthcheck", "run", container.name)


def test_client_through_the_published_port(container: Container) -> None:
    assert cli(container.target, "health").strip() == "SERVING"
    assert cli(container.target, "translation", SENTENCE).strip() == GERMAN
    with Client(container.target, timeout=60) as client:  # streamed: one message per token as decoded
        updates = list(client.translate(SENTENCE))
    *streamed, last = updates  # then the whole translation (copied spans restored), with no token
    assert len(streamed) == len(GERMAN.split()) + 1 and all(len(u.tokens) == 1 for u in streamed)
    assert not last.tokens and last.text == GERMAN
    lines = cli(container.target, "sentiment", stdin="A tedious, overlong mess that never finds its footing.")
    assert len(lines.splitlines()) == 11 and "tedious" in lines and "P(positive)=" in lines
    steps = cli(container.target, "forecast", "--history", ",".join(map(str, HISTORY)), "--horizon", "12",
                "--quantiles", "0.1", "0.5", "0.9").splitlines()
    assert len(steps) == 13 and steps[0].startswith("step month") and steps[-1].split()[:2] == ["12", "12"]
    models = cli(container.target, "models").splitlines()
    names = ("forecast", "sentiment", "translation")
    assert [line.split()[0] for line in models] == [f"{name}/{newest(name)}" for name in names]


def newest(model: str) -> int:
    """The version of ``model`` the image holds: the newest in the repository (the Dockerfile)."""
    return max(int(version.name) for version in (ROOT / "models" / model).iterdir())


def manifest() -> list[dict]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))


def server_spec() -> dict:
    deployment = next(d for d in manifest() if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_health_answers_within_the_probe_timeout_under_load(container: Container) -> None:
    """192 translation streams at once (the load at which 898 ms was measured before) while health is checked."""
    timeout = server_spec()["readinessProbe"]["timeoutSeconds"]
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with Client(container.target, timeout=timeout) as client:
            while not done.is_set():
                started = time.perf_counter()
                assert client.health() == "SERVING"
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

    def stream(index: int) -> int:
        with Client(container.target, timeout=120) as client:
            # One sentence (a text of several takes a stream slot per sentence: 192 streams must fit max_streams).
            text = ", ".join([f"Click the Save button to save the document number {index}",
                              "the file could not be opened"] * 3) + "."
            return sum(len(u.tokens) for u in client.translate(text))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(192) as pool:
            tokens = sum(pool.map(stream, range(192)))
    finally:
        done.set()
        prober.join(30)
    report("health check under 192 translation streams", f"worst {max(latencies) * 1000:.0f} ms of "
           f"{len(latencies)} checks ({tokens} tokens streamed); probe timeout {timeout} s")
    assert tokens > 192 * 30 and len(latencies) > 3 and max(latencies) < timeout


def test_promtool_check_metrics_is_clean(container: Container) -> None:
    traffic(container.target, streams=2)
    page = urllib.request.urlopen(container.metrics).read()
    checked = run("promtool", "check", "metrics", input=page.decode(), check=False)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr


def test_prometheus_config_and_rules_pass_promtool() -> None:
    run("promtool", "check", "config", str(MONITORING / "prometheus.yml"))
    run("promtool", "check", "rules", str(MONITORING / "rules.yml"))
    run("promtool", "test", "rules", str(MONITORING / "rules_test.yml"))


def answers(prometheus: str, promql: str) -> bool:
    """Whether the query returns data; False while Prometheus is still starting."""
    try:
        return bool(query(prometheus, promql))
    except (urllib.error.URLError, ConnectionError):
        return False


def query(prometheus: str, promql: str) -> list[dict]:
    """An instant query through Prometheus's HTTP API; fails on a query that does not parse."""
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{promql}: {error.read().decode()}") from None
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(container: Container) -> Iterator[str]:
    """Debian's Prometheus scraping the container every second, with deploy/monitoring/rules.yml, after traffic."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(MONITORING / "rules.yml")],
            "scrape_configs": [{"job_name": "seqserve", "static_configs": [
                {"targets": [container.metrics.removeprefix("http://").removesuffix("/metrics")]}]}],
        }))
        run("promtool", "check", "config", str(config))
        url = f"http://127.0.0.1:{free_port()}"
        process = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder}/data",
                                    f"--web.listen-address={url.removeprefix('http://')}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: answers(url, 'up{job="seqserve"} == 1'), 60, pause=0.5)
            for _ in range(3):  # rates need increases between scrapes
                traffic(container.target)
                time.sleep(1.5)
            yield url
        finally:
            process.terminate()
            process.wait(30)


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "seqserve.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def as_prometheus(expr: str) -> str:
    """A Grafana query as Prometheus runs it: ``$__rate_interval`` is at least 4 scrape intervals."""
    return expr.replace("$__rate_interval", "1m")


def test_prometheus_scrapes_the_container(prometheus: str) -> None:
    models = query(prometheus, "seqserve_model_info")
    assert sorted(m["metric"]["model"] for m in models) == ["forecast", "sentiment", "translation"]
    assert {m["metric"]["provider"] for m in models} == {"CPUExecutionProvider"}
    slots = query(prometheus, 'sum(seqserve_stream_slots{model="translation"})')
    assert float(slots[0]["value"][1]) == 256
    assert float(query(prometheus, "sum(seqserve_tokens_total)")[0]["value"][1]) > 0
    assert float(query(prometheus, "sum(seqserve_forecast_steps_total)")[0]["value"][1]) > 0


def test_every_dashboard_and_alert_query_returns_data(prometheus: str) -> None:
    """Each dashboard query returns data after the traffic; each alert rule parses and every series it reads exists."""
    datasource = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
                                .read_text())["datasources"][0]["uid"]
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "seqserve.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource}
    queries = [as_prometheus(expr) for expr in dashboard_queries()]
    wait_until(lambda: all(query(prometheus, q) for q in queries), 30, pause=1)
    rules = [rule for group in yaml.safe_load((MONITORING / "rules.yml").read_text())["groups"]
             for rule in group["rules"]]
    assert len(rules) >= 6
    for rule in rules:
        query(prometheus, rule["expr"])  # parses; empty while healthy
        names = set(re.findall(r"\b(?:seqserve|process|python)_\w+|\bup\b", rule["expr"]))
        assert names, rule["alert"]
        for name in names:
            assert query(prometheus, name), f"{rule['alert']}: no series {name}"


def test_prometheus_adapter_rule_returns_data(prometheus: str) -> None:
    """The adapter's query, with the labels a Kubernetes scrape adds (namespace, pod) replaced by this one's."""
    rule = yaml.safe_load((ROOT / "deploy" / "prometheus-adapter.yaml").read_text())["rules"]["custom"][0]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    promql = (rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", 'job="seqserve"')
              .replace("<<.GroupBy>>", "instance"))
    assert query(prometheus, promql)


def test_kubernetes_manifest_with_podman_kube_play() -> None:
    """`podman kube play deploy/kubernetes.yaml`: the pod passes its probes, serves, runs confined.

    Podman 4.3 runs no gRPC probes, so the test runs the manifest's startup probe, then its readiness probe,
    as the kubelet would: grpc.health.v1 on the probe's port, with its timeout, every period. Podman 4.3
    also publishes each containerPort on the host (later versions do not), so those ports must be free.
    """
    spec = server_spec()
    for port in (p["containerPort"] for p in spec["ports"]):
        with socket.socket() as taken:
            try:
                taken.bind(("0.0.0.0", port))
            except OSError:
                pytest.fail(f"port {port} is in use: podman 4.3 publishes the pod's containerPort {port} on the host")
    played = podman("kube", "play", str(ROOT / "deploy" / "kubernetes.yaml"), timeout=120)
    try:
        lines = played.stdout.split()
        containers = [lines[i + 1] for i, line in enumerate(lines) if line == "Container:"]
        assert len(containers) == 1, played.stdout  # one pod: the HPA owns the replica count

        def passes(probe: dict) -> bool:
            return podman("exec", containers[0], "python", "-m", "client", "--server",
                          f"localhost:{probe['grpc']['port']}", "--timeout", str(probe["timeoutSeconds"]), "health",
                          check=False).returncode == 0

        started = time.monotonic()
        for kind in ("startupProbe", "readinessProbe"):
            probe = spec[kind]
            wait_until(lambda probe=probe: passes(probe), probe["periodSeconds"] * probe.get("failureThreshold", 3),
                       pause=probe["periodSeconds"])
        report("kube play to pod ready (startup, then readiness probe passed)", f"{time.monotonic() - started:.1f} s")
        inside = podman("exec", containers[0], "sh", "-c", "id -u; grep -E '^(NoNewPrivs|CapEff)' /proc/1/status; "
                        "touch /app/x 2>&1 || true").stdout
        assert inside.startswith("10001\n") and "Read-only file system" in inside, inside
        status = dict(re.findall(r"^(NoNewPrivs|CapEff):\s*(\S+)", inside, re.MULTILINE))
        assert status == {"NoNewPrivs": "1", "CapEff": "0000000000000000"}, inside
        answer = podman("exec", containers[0], "python", "-m", "client", "--timeout", "60", "translation", SENTENCE)
        assert answer.stdout.strip() == GERMAN
        logs = podman("logs", containers[0]).stderr.splitlines()
        assert logs and all(json.loads(line)["message"] for line in logs), logs  # SEQSERVE_LOG_FORMAT=json
    finally:
        podman("kube", "down", str(ROOT / "deploy" / "kubernetes.yaml"), check=False)


def test_compose_stack_with_podman_compose() -> None:
    """docker-compose.yml's server and Prometheus with podman-compose; Grafana has no image here (deploy/README.md)."""
    podman("build", "--network", "host", "-t", "seqserve-prometheus:latest", "-f",
           str(MONITORING / "prometheus.Dockerfile"), str(MONITORING), timeout=600)
    ports = {name: free_port() for name in ("GRPC_HOST_PORT", "METRICS_HOST_PORT", "PROMETHEUS_HOST_PORT")}
    env = os.environ | {name: str(port) for name, port in ports.items()}
    compose = ["podman-compose", "-p", NAME, "-f", str(ROOT / "docker-compose.yml")]
    try:
        run(*compose, "up", "-d", "seqserve", "prometheus", env=env, cwd=ROOT, timeout=300)
        target, prometheus = f"127.0.0.1:{ports['GRPC_HOST_PORT']}", f"http://127.0.0.1:{ports['PROMETHEUS_HOST_PORT']}"
        wait_until(lambda: serving(target), 60)
        traffic(target, streams=2)
        wait_until(lambda: answers(prometheus, 'sum(seqserve_tokens_total{job="seqserve"}) > 0'), 90, pause=1)
        rules = json.loads(urllib.request.urlopen(f"{prometheus}/api/v1/rules").read())["data"]["groups"]
        alerts = {rule["name"] for group in rules for rule in group["rules"]}
        assert alerts == {rule["alert"] for group in yaml.safe_load((MONITORING / "rules.yml").read_text())["groups"]
                          for rule in group["rules"]}
    finally:
        run(*compose, "down", env=env, cwd=ROOT, timeout=300, check=False)
        podman("network", "rm", f"{NAME}_default", check=False)


def test_sigterm_drains_and_exits_cleanly() -> None:
    """`podman stop`: the server (PID 1) gets SIGTERM, reports NOT_SERVING for drain_s, lets streams finish and exits
    0 (the sequence itself: tests/test_shutdown.py)."""
    name = f"{NAME}-stop"
    stopping = start(name, "-e", "SEQSERVE_GRACE_S=2")
    try:
        wait_until(lambda: serving(stopping.target), 60)
        started = time.monotonic()
        podman("stop", "-t", "20", name)
        report("podman stop (SIGTERM) to exit, idle server", f"{time.monotonic() - started:.1f} s")
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        logs = podman("logs", name).stderr
        assert "NOT_SERVING: draining for 2 s, then open calls have 2 s to finish" in logs
        assert logs.rstrip().endswith("stopped")
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
