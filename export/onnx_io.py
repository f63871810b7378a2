"""Shared export plumbing: trace to ONNX, describe a graph, write the manifest with checksums."""

from __future__ import annotations

import hashlib
import multiprocessing
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import onnx
import torch

from contract.manifest import MANIFEST_FORMAT
from training.common import git_commit, write_json

OPSET = 18
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


def export_graph(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> dict[str, Any]:
    """Export ``module(*args)`` with the dynamo exporter and return its manifest entry.

    ``dynamic_axes`` maps an input name to ``{axis: symbol}``; symbols with one name share one
    dimension. The saved graph is checked: every named axis must still be symbolic.
    """
    dims: dict[str, torch.export.Dim] = {}
    flat = iter(
        {axis: dims.setdefault(symbol, torch.export.Dim(symbol)) for axis, symbol in dynamic_axes.get(name, {}).items()}
        for name in input_names
    )
    # dynamic_shapes mirrors the arguments' structure: a tuple argument (``*state``) gets a tuple.
    shapes = tuple(tuple(next(flat) for _ in arg) if isinstance(arg, tuple) else next(flat) for arg in args)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        module.eval(), args, str(path), input_names=input_names, output_names=output_names,
        dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, external_data=False,
    )
    entry = describe_graph(path)
    for name, axes in dynamic_axes.items():
        shape = next(i["shape"] for i in entry["inputs"] if i["name"] == name)
        frozen = [axis for axis in axes if not isinstance(shape[axis], str)]
        if frozen:
            raise RuntimeError(f"{path}: input {name!r} lost its dynamic axes {frozen} (shape {shape})")
    return entry


def export_graph_apart(*args: Any) -> dict[str, Any]:
    """``export_graph`` in a fresh process. With torch 2.13 the dynamo exporter freezes a dynamic axis of the
    second model with a recurrent layer that one process exports, whichever comes first."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(export_graph, *args).result()


def wire_sequence_lengths(path: Path, lengths: str) -> dict[str, Any]:
    """Feed graph input ``lengths`` (int64 ``[batch]``) to every ``LSTM``/``GRU``/``RNN`` node's ``sequence_lens``,
    rewriting ``path``, and return its manifest entry.

    torch's exporter leaves ``sequence_lens`` empty (every row runs the whole time axis). With it, ONNX's
    recurrent operators stop each row at its length: ``Y`` is zero after it and the final state outputs
    (``Y_h``, ``Y_c``) are the state after the row's last real step, so rows of different lengths share a run.
    """
    model = onnx.load(str(path))
    recurrent = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    if not recurrent or lengths not in {i.name for i in model.graph.input}:
        raise RuntimeError(f"{path}: no recurrent operator, or no input {lengths!r}, to wire")
    cast = onnx.helper.make_node("Cast", [lengths], [f"{lengths}_int32"], to=onnx.TensorProto.INT32)
    for node in recurrent:
        while len(node.input) < 5:
            node.input.append("")
        node.input[4] = cast.output[0]
    model.graph.node.insert(0, cast)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return describe_graph(path)


def name_output_axes(path: Path, axes: dict[str, dict[int, str]]) -> None:
    """Declare output axes symbolic (``{output: {axis: symbol}}``) where the exporter wrote the example's size, and
    drop its inferred intermediate shapes, which carry that size too (it does so for the chunk graph's
    ``tokens`` after the recurrent layer). ONNX Runtime infers them again; the graph's computation is unchanged."""
    model = onnx.load(str(path))
    for output in model.graph.output:
        for axis, symbol in axes.get(output.name, {}).items():
            output.type.tensor_type.shape.dim[axis].dim_param = symbol
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def describe_graph(path: Path) -> dict[str, Any]:
    """File name, opset, and each input's and output's name, dtype and shape (symbols as strings)."""
    model = onnx.load(str(path), load_external_data=False)

    def tensors(values: Any) -> list[dict[str, Any]]:
        described = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
            described.append({"name": value.name, "dtype": ONNX_DTYPES[tensor.elem_type], "shape": shape})
        return described

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inputs, outputs = tensors(model.graph.input), tensors(model.graph.output)
    return {"file": path.name, "opset": opset, "inputs": inputs, "outputs": outputs}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Add checksums of every other file in ``out_dir`` and provenance, then write ``manifest.json``."""
    files = sorted(p for p in out_dir.iterdir() if p.is_file() and p.name != "manifest.json")
    manifest = {
        "format": MANIFEST_FORMAT,
        **manifest,
        "files": {p.name: sha256(p) for p in files},
        "provenance": {
            "git_commit": git_commit(),
            "command": shlex.join(["python", "-m", "export", *sys.argv[1:]]),
            "torch": torch.__version__,
            "onnx_opset": OPSET,
        },
    }
    path = out_dir / "manifest.json"
    write_json(path, manifest)
    return path
