"""Every numeric option's range, log levels in any case, and one-line start-up errors from ``python -m server``."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from servers import ROOT

from server.config import RANGES, Config, load_config

NUMERIC = [f.name for f in fields(Config) if f.type in ("int", "float")]


def test_every_numeric_option_has_a_range() -> None:
    assert sorted(RANGES) == sorted(NUMERIC)


def documented(value: object) -> str:
    """A default as docs/server.md writes it: ``none`` for an empty string, no ``.0`` on a whole number."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"`{value}`" if value != "" else "none"


def test_the_configuration_table_in_docs_lists_every_option_with_its_default() -> None:
    """docs/server.md is the one place the limits are documented: its table names every option and its default."""
    text = (ROOT / "docs" / "server.md").read_text().split("## Configuration", 1)[1].split("\n\n`python -m server")[0]
    table = {}
    for row in text.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            names, defaults = cells[0].split(" / "), cells[1].split(" / ")
            table |= dict(zip((n.strip("`") for n in names), defaults * len(names) if len(defaults) == 1 else defaults,
                              strict=True))
    assert sorted(table) == sorted(f.name for f in fields(Config))
    for f in fields(Config):
        assert table[f.name].strip("`") == documented(f.default).strip("`"), f.name


@pytest.mark.parametrize("name", NUMERIC)
def test_an_option_out_of_its_range_is_named(name: str) -> None:
    low, high = RANGES[name]
    wrong = [low - 1] + ([high + 1] if high is not None else []) + (["nan"] if Config.__annotations__[name] ==
                                                                    "float" else [])
    for value in wrong:
        with pytest.raises(ValueError) as error:
            load_config([f"--{name.replace('_', '-')}", str(value)], {})
        message = str(error.value)
        assert message.startswith(f"flags: {name} is ") and "it must be" in message and "\n" not in message


def test_log_levels_in_any_case_and_bounds_that_hold() -> None:
    assert load_config(["--log-level", "warning"], {}).log_level == "WARNING"
    assert load_config([], {"SEQSERVE_LOG_LEVEL": "Debug"}).log_level == "DEBUG"
    with pytest.raises(ValueError, match="log_level is 'loud', it must be one of"):
        load_config(["--log-level", "loud"], {})
    assert load_config(["--max-batch", "1", "--port", "0", "--metrics-port", "-1", "--drain-s", "0"], {}).max_batch == 1


@pytest.mark.parametrize(("flags", "words"), [
    (["--max-batch", "0"], "flags: max_batch is 0, it must be at least 1"),
    (["--grace-s", "-1"], "flags: grace_s is -1.0, it must be at least 0"),
    (["--port", "99999"], "port is 99999, it must be between 0 and 65535"),
    (["--log-level", "chatty"], "log_level is 'chatty'"),
    (["--tls-cert", "server.pem"], "tls_cert and tls_key go together"),
    (["--tls-client-ca", "ca.pem"], "tls_client_ca (client certificates) needs tls_cert and tls_key"),
    (["--models", "no/such/folder"], "no/such/folder: the model repository does not exist"),
    (["--auth-tokens-file", "no/such/tokens.txt"], "No such file or directory: 'no/such/tokens.txt'"),
])
def test_the_server_refuses_to_start_in_one_line(flags: list[str], words: str, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--metrics-port", "-1", *flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in run.stderr, run.stderr
