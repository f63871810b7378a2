"""Generate the gRPC Python code from ``protos/`` into ``server/gen/`` (git-ignored).

Run by ``make install`` (``python -m server.protos``) and by the test session when missing;
it needs grpcio-tools (the ``dev`` extra), the server itself does not. protoc writes imports
after the proto paths (``from seqserve.v1 import common_pb2``); they are rewritten to
``server.gen.seqserve.v1`` so the generated package needs no ``sys.path`` entry.
"""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = Path(__file__).resolve().parent / "gen"
STAMP = OUT / ".generated"


def generate(out: Path = OUT) -> None:
    from grpc_tools import protoc  # build-time only

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto"))
    include = resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
            f"--pyi_out={out}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {files}")
    roots = "|".join(sorted({Path(f).parts[0] for f in files}))
    package = ".".join(out.relative_to(ROOT).parts)
    for path in out.rglob("*.py*"):
        text = re.sub(rf"^from ({roots})\.", rf"from {package}.\1.", path.read_text(), flags=re.MULTILINE)
        path.write_text(text)
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    STAMP.touch()


def ensure_generated() -> None:
    """Generate when ``server/gen`` is missing or older than a proto (a fresh clone, an edited proto)."""
    newest = max(path.stat().st_mtime for path in PROTOS.rglob("*.proto"))
    if not STAMP.exists() or STAMP.stat().st_mtime < newest:
        generate()


if __name__ == "__main__":
    generate()
