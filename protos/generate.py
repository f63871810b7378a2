"""Generate the gRPC Python code beside the ``.proto`` files: ``protos/seqserve/v1/*_pb2*.py`` (git-ignored).

Run by every build of the package (``setup.py``: ``pip install .``, ``pip install -e .``, the image), by
``make protos`` and by the test session when missing or older than a proto; it needs grpcio-tools (a
build requirement and the ``dev`` extra), the server itself does not. protoc writes imports after the
proto paths (``from seqserve.v1 import common_pb2``); they are rewritten to ``protos.seqserve.v1``
so the generated modules need no ``sys.path`` entry.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
STAMP = PROTOS / ".generated"


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
        text = re.sub(rf"^from ({roots})\.", rf"from {PROTOS.name}.\1.", path.read_text(), flags=re.MULTILINE)
        path.write_text(text)
    STAMP.touch()


def ensure_generated() -> None:
    """Generate when the code is missing or older than a proto (a fresh clone, an edited proto)."""
    newest = max(path.stat().st_mtime for path in PROTOS.rglob("*.proto"))
    if not STAMP.exists() or STAMP.stat().st_mtime < newest:
        generate()


if __name__ == "__main__":
    generate()
