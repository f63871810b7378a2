"""The build hook: every wheel (``pip install .``, ``pip install -e .``, the image) generates the gRPC code
(``protos/seqserve/v1/*_pb2*.py``, git-ignored) with the build's own grpcio-tools before its modules are
collected, so a runtime install needs no grpcio-tools. Everything else is in ``pyproject.toml``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

GENERATE = Path(__file__).resolve().parent / "protos" / "generate.py"


class BuildWithProtos(build_py):
    def run(self) -> None:
        spec = importlib.util.spec_from_file_location("protos_generate", GENERATE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
