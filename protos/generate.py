"""Generate the gRPC Python code beside the ``.proto`` files: ``protos/*/**/*_pb2*.py`` (git-ignored).

Run by every build of the package (``setup.py``: ``pip install .``, ``pip install -e .``, the image), by
``make protos`` and by the test session when missing or older than a proto; it needs grpcio-tools (a
build requirement and the ``dev`` extra), the server itself does not. protoc writes imports after the
proto paths (``from seqserve.v1 import common_pb2``, ``from inference import kserve_pb2``); they are
rewritten to ``protos.seqserve.v1`` and ``protos.inference`` so the generated modules need no
``sys.path`` entry. The packages in ``OWN_POOL`` register in their ``POOL`` instead of protobuf's
default pool (``protos/inference/__init__.py`` says why).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
STAMP = PROTOS / ".generated"
OWN_POOL = {"inference"}
DEFAULT_POOL = "_descriptor_pool.Default()"


def generate() -> None:
    from grpc_tools import protoc  # build-time only

    for old in PROTOS.rglob("*_pb2*.py*"):
        old.unlink()
    files = sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto"))
    include = resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={PROTOS}", f"--grpc_python_out={PROTOS}",
            f"--pyi_out={PROTOS}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {files}")
    roots = "|".join(sorted({Path(f).parts[0] for f in files}))
    for path in PROTOS.rglob("*_pb2*.py*"):
        text = re.sub(rf"^from ({roots})([. ])", rf"from {PROTOS.name}.\1\2", path.read_text(), flags=re.MULTILINE)
        package = path.relative_to(PROTOS).parts[0]
        if package in OWN_POOL and DEFAULT_POOL in text:
            builder = "from google.protobuf.internal import builder as _builder\n"
            text = text.replace(DEFAULT_POOL, "_POOL").replace(
                builder, f"{builder}from {PROTOS.name}.{package} import POOL as _POOL\n")
        path.write_text(text)
    STAMP.touch()


def ensure_generated() -> None:
    """Generate when the code is missing or older than a proto (a fresh clone, an edited proto)."""
    newest = max(path.stat().st_mtime for path in PROTOS.rglob("*.proto"))
    if not STAMP.exists() or STAMP.stat().st_mtime < newest:
        generate()


if __name__ == "__main__":
    generate()
