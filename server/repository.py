"""Load and validate a model repository (``docs/manifest.md``) with ONNX Runtime, no torch.

Every problem raises ``ManifestError`` naming the file and the field, so an operator reads
one line and knows what to fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

MANIFEST_FORMAT = "seqserve-manifest/1"
TASKS = ("sentiment", "forecast", "translation")
ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}

SessionFactory = Callable[[Path], ort.InferenceSession]


class ManifestError(ValueError):
    """A repository problem; the message names the file and the field."""


@dataclass
class Model:
    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    sessions: dict[str, ort.InferenceSession] = field(repr=False)

    @property
    def task(self) -> str:
        return self.manifest["task"]

    def state(self, graph: str) -> list[dict[str, Any]]:
        return [s for s in self.manifest.get("state", []) if s["graph"] == graph]

    def context(self, graph: str) -> list[dict[str, Any]]:
        return [c for c in self.manifest.get("context", []) if c["graph"] == graph]


def cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def load_repository(root: Path, session_factory: SessionFactory = cpu_session) -> dict[str, dict[int, Model]]:
    """Every ``<root>/<name>/<version>/manifest.json``, validated: ``{name: {version: Model}}``."""
    if not root.is_dir():
        raise ManifestError(f"{root}: the model repository does not exist")
    models: dict[str, dict[int, Model]] = {}
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        model = load_model(manifest_path.parent, session_factory)
        models.setdefault(model.name, {})[model.version] = model
    if not models:
        raise ManifestError(f"{root}: no models found (expected <name>/<version>/manifest.json)")
    return models


def load_model(folder: Path, session_factory: SessionFactory = cpu_session) -> Model:
    manifest_path = folder / "manifest.json"
    where = str(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(f"{where}: cannot read the manifest: {error}") from error
    if not folder.name.isdigit() or int(folder.name) < 1:
        raise ManifestError(f"{where}: the version folder {folder.name!r} must be a positive integer")
    for key in ("format", "task", "graphs", "files"):
        if key not in manifest:
            raise ManifestError(f"{where}: field {key!r} is missing")
    if manifest["format"] != MANIFEST_FORMAT:
        raise ManifestError(f"{where}: field 'format' is {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
    if manifest["task"] not in TASKS:
        raise ManifestError(f"{where}: field 'task' is {manifest['task']!r}, expected one of {TASKS}")
    _check_files(folder, manifest, where)
    sessions = {name: session_factory(folder / graph["file"]) for name, graph in manifest["graphs"].items()}
    for name, graph in manifest["graphs"].items():
        _check_graph(sessions[name], graph, f"{where}: graphs.{name}")
    _check_pairs(manifest, where)
    return Model(folder.parent.name, int(folder.name), folder, manifest, sessions)


def _check_files(folder: Path, manifest: dict[str, Any], where: str) -> None:
    for name, graph in manifest["graphs"].items():
        if graph.get("file") not in manifest["files"]:
            raise ManifestError(f"{where}: graphs.{name}.file {graph.get('file')!r} is not listed in 'files'")
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ManifestError(f"{where}: files.{name}: {path} is missing")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise ManifestError(f"{where}: files.{name}: sha256 mismatch ({path} is {actual[:12]}…, "
                                f"the manifest says {expected[:12]}…); the file was changed after export")


def _check_graph(session: ort.InferenceSession, graph: dict[str, Any], where: str) -> None:
    for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        found = {arg.name: ORT_DTYPES.get(arg.type, arg.type) for arg in actual}
        for index, declared in enumerate(graph.get(kind, [])):
            name = declared.get("name")
            if name not in found:
                raise ManifestError(f"{where}.{kind}[{index}]: {name!r} is not in {graph['file']} "
                                    f"(the graph has {sorted(found)})")
            if found[name] != declared.get("dtype"):
                raise ManifestError(f"{where}.{kind}[{index}]: {name!r} is {found[name]} in {graph['file']}, "
                                    f"the manifest says {declared.get('dtype')}")


def _io(manifest: dict[str, Any], graph: str, kind: str, name: str) -> dict[str, Any] | None:
    return next((t for t in manifest["graphs"].get(graph, {}).get(kind, []) if t["name"] == name), None)


def _check_pairs(manifest: dict[str, Any], where: str) -> None:
    for index, state in enumerate(manifest.get("state", [])):
        here = f"{where}: state[{index}]"
        graph = state.get("graph")
        if graph not in manifest["graphs"]:
            raise ManifestError(f"{here}.graph: {graph!r} is not a graph of this model")
        source = _io(manifest, graph, "inputs", state.get("input"))
        sink = _io(manifest, graph, "outputs", state.get("output"))
        if source is None:
            raise ManifestError(f"{here}.input: {state.get('input')!r} is not an input of graph {graph!r}")
        if sink is None:
            raise ManifestError(f"{here}.output: state {state['input']!r} has no paired output "
                                f"({state.get('output')!r} is not an output of graph {graph!r})")
        for tensor, role in ((source, "input"), (sink, "output")):
            if tensor["dtype"] != state.get("dtype") or tensor["shape"][1:] != list(state["shape"]):
                raise ManifestError(f"{here}: {role} {tensor['name']!r} is {tensor['dtype']}{tensor['shape']}, "
                                    f"the state says {state.get('dtype')}[batch, {state['shape']}]")
        initial = state.get("initial")
        if isinstance(initial, dict):
            _check_reference(manifest, initial, f"{here}.initial")
        elif not isinstance(initial, int | float):
            raise ManifestError(f"{here}.initial: expected a number or {{graph, output}}, got {initial!r}")
    for index, context in enumerate(manifest.get("context", [])):
        here = f"{where}: context[{index}]"
        if _io(manifest, context.get("graph", ""), "inputs", context.get("input")) is None:
            graph = context.get("graph")
            raise ManifestError(f"{here}.input: {context.get('input')!r} is not an input of graph {graph!r}")
        _check_reference(manifest, context.get("from", {}), f"{here}.from")


def _check_reference(manifest: dict[str, Any], reference: dict[str, Any], here: str) -> None:
    if _io(manifest, reference.get("graph", ""), "outputs", reference.get("output")) is None:
        raise ManifestError(f"{here}: {reference.get('graph')!r}.{reference.get('output')!r} is not a graph output")
