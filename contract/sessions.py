"""ONNX Runtime sessions tuned for small recurrent steps, and where a session keeps its tensors.

The server (``server.engine.session_factory``, from its ``Config``) and the bench's in-process
baseline (a) build their sessions here, so both run the graphs with the same options; the
reference runtime (``evaluate/``) takes whatever sessions the loaded ``Model`` holds.
Why these options: ``docs/server.md`` (threads, spinning) and ``bench/RESULTS.md`` (TF32 on CUDA).
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from contract.repository import SessionFactory

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers(names: str = "auto", cuda_tf32: bool = False) -> list[str | tuple[str, dict[str, str]]]:
    """``names``: ``"auto"`` (CUDA when this ONNX Runtime has it, then CPU) or a comma list of providers.

    CUDA runs without TF32 unless ``cuda_tf32``: with TF32 a row's results depended on the batch size.
    """
    if names != "auto":
        chosen = [p.strip() for p in names.split(",") if p.strip()]
    else:
        available = ort.get_available_providers()
        chosen = [p for p in (CUDA, CPU) if p in available]
    cuda = {"use_tf32": "1" if cuda_tf32 else "0"}
    return [(name, cuda) if name == CUDA else name for name in chosen]


def step_sessions(intra_op_threads: int = 2, inter_op_threads: int = 1, spinning: bool = False,
                  provider_names: str = "auto", cuda_tf32: bool = False) -> SessionFactory:
    """A factory of sessions for one-step graphs: sequential execution, all graph optimizations,
    ``intra_op_threads`` threads that do not spin-wait between runs unless ``spinning``."""
    chosen = providers(provider_names, cuda_tf32)

    def make(path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), options, providers=chosen)

    return make


def session_device(session: ort.InferenceSession) -> str:
    """Where the session's tensors live: ``cuda`` when its first provider is CUDA, else ``cpu``."""
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"
