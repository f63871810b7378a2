"""Load a model repository (``<root>/<name>/<version>/manifest.json``) with ONNX Runtime, no torch.

The manifest is validated by ``contract.manifest``; here the files are checked against their
sha256 and every declared graph input and output against the ONNX graph. Every problem raises
``ManifestError`` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import onnxruntime as ort

from contract.manifest import PREPROCESSING, Manifest, ManifestError, parse_manifest

ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}

SessionFactory = Callable[[Path], ort.InferenceSession]
P = TypeVar("P")


@dataclass
class Model:
    name: str
    version: int
    path: Path
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession] = field(repr=False)

    @property
    def task(self) -> str:
        return self.manifest.task

    def preprocessing(self, kind: type[P]) -> P:
        """The manifest's ``preprocessing``, which must be ``kind`` (a model of that task), else ``ValueError``."""
        pre = self.manifest.preprocessing
        if not isinstance(pre, kind):
            wanted = next(task for task, known in PREPROCESSING.items() if known is kind)
            raise ValueError(f"{self.name}/{self.version} is a {self.task} model, not a {wanted} model")
        return pre


def cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def load_repository(root: Path, session_factory: SessionFactory = cpu_session) -> dict[str, dict[int, Model]]:
    """Every ``<root>/<name>/<version>/manifest.json``, validated: ``{name: {version: Model}}``."""
    if not root.is_dir():
        raise ManifestError(f"{root}: the model repository does not exist")
    models: dict[str, dict[int, Model]] = {}
    for folder in version_folders(root):
        model = load_model(folder, session_factory)
        models.setdefault(model.name, {})[model.version] = model
    if not models:
        raise ManifestError(f"{root}: no models found (expected <name>/<version>/manifest.json)")
    return models


def version_folders(root: Path) -> list[Path]:
    """The folders of ``root`` that hold a model version (``<name>/<version>/manifest.json``), sorted."""
    return sorted(manifest_path.parent for manifest_path in root.glob("*/*/manifest.json"))


def read_manifest(folder: Path) -> Manifest:
    """``folder/manifest.json``, validated, with its files checked against their sha256."""
    manifest_path = folder / "manifest.json"
    where = str(manifest_path)
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(f"{where}: cannot read the manifest: {error}") from error
    manifest = parse_manifest(data, where)
    inside = folder.resolve()
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.resolve().is_relative_to(inside):  # a link out of the folder
            raise ManifestError(f"{where}: files.{name}: {path} leads outside the model's folder ({path.resolve()})")
        if not path.is_file():
            raise ManifestError(f"{where}: files.{name}: {path} is missing")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise ManifestError(f"{where}: files.{name}: sha256 mismatch ({path} is {actual[:12]}…, "
                                f"the manifest says {expected[:12]}…); the file was changed after export")
    return manifest


def load_model(folder: Path, session_factory: SessionFactory = cpu_session) -> Model:
    where = str(folder / "manifest.json")
    if not folder.name.isdigit() or int(folder.name) < 1:
        raise ManifestError(f"{where}: the version folder {folder.name!r} must be a positive integer")
    manifest = read_manifest(folder)
    sessions = {name: session_factory(folder / graph.file) for name, graph in manifest.graphs.items()}
    for name, graph in manifest.graphs.items():
        session = sessions[name]
        for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            found = {arg.name: ORT_DTYPES.get(arg.type, arg.type) for arg in actual}
            for index, declared in enumerate(getattr(graph, kind)):
                here = f"{where}: graphs.{name}.{kind}[{index}]"
                if declared.name not in found:
                    raise ManifestError(f"{here}: {declared.name!r} is not in {graph.file} (the graph has "
                                        f"{sorted(found)})")
                if found[declared.name] != declared.dtype:
                    raise ManifestError(f"{here}: {declared.name!r} is {found[declared.name]} in {graph.file}, "
                                        f"the manifest says {declared.dtype}")
    return Model(folder.parent.name, int(folder.name), folder, manifest, sessions)
