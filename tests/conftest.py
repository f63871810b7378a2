from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.fail("data/ is missing: run `make data` (make test does it first)")
    return DATA


def pytest_sessionstart(session: pytest.Session) -> None:
    """The gRPC code is generated, never committed: make it on a fresh clone before collection."""
    from protos.generate import ensure_generated

    ensure_generated()


@pytest.fixture(scope="module")
def running(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A server in this process for the module's tests: with the module's ``SERVER_CONFIG``, else ``servers.CONFIG``."""
    from servers import CONFIG, Running

    running = Running(getattr(request.module, "SERVER_CONFIG", CONFIG))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(running: Any) -> Iterator[Any]:
    from client import Client

    with Client(running.target, timeout=30) as client:
        yield client
