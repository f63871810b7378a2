"""``python -m bench.server_nospin [server flags]``: the server with ONNX Runtime's spin-waiting off.

An experiment for ``python -m bench --no-spin``, not a server mode: ORT's intra-op worker
threads spin after each run by default, which on 2 cores takes CPU from the event loop and the
clients. This sets ``session.intra_op.allow_spinning = 0`` on every session, all else as the server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import onnxruntime as ort

from server import __main__ as entry
from server import engine

server_session_factory = engine.session_factory


def session_factory(config):
    make = server_session_factory(config)

    def without_spinning(path: Path) -> ort.InferenceSession:
        session = make(path)
        options = session.get_session_options()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=session.get_providers())

    return without_spinning


if __name__ == "__main__":
    engine.session_factory = session_factory
    asyncio.run(entry.serve())
