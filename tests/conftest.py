from pathlib import Path

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
