"""The manifest (``docs/manifest.md``) as typed, validated dataclasses: the one place its schema lives.

``export/`` writes manifests with ``MANIFEST_FORMAT`` and these field names; the server, the
reference runtime (``evaluate/``) and the bench read them with ``parse_manifest``. Every problem
raises ``ManifestError`` naming the file and the field (``…/manifest.json: preprocessing.eos_id
is missing``), so an operator reads one line and knows what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, ClassVar

from contract.forecast import TRANSFORMS, Adjustment, adjust, prepare
from contract.translation import OutputLength

MANIFEST_FORMAT = "seqserve-manifest/1"
TASKS = ("sentiment", "forecast", "translation")  # a manifest without ``task`` is a generic stateful step graph
DTYPES = ("float32", "int64", "int32", "bool")
Needs = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # graph -> (inputs, outputs) a task reads


class ManifestError(ValueError):
    """A repository problem; the message names the file and the field."""


class Fields:
    """A JSON object read field by field; a missing or mistyped field raises ``ManifestError`` naming its path."""

    def __init__(self, data: Any, where: str, path: str = "") -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: {path or 'the manifest'} must be an object, got {type(data).__name__}")
        self.data, self.where, self.path = data, where, path

    def name(self, key: str | int) -> str:
        return f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}" if self.path else key

    def error(self, key: str | int, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}: {self.name(key)} {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.error(key, "is missing")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.error(key, f"is {value!r}, expected {names}")
        return value

    def number(self, key: str, default: Any = ...) -> float:
        return float(self.get(key, (int, float), default))

    def object(self, key: str) -> Fields:
        return Fields(self.get(key, dict), self.where, self.name(key))

    def objects(self, key: str, default: Any = ...) -> list[Fields]:
        items = self.get(key, list, default)
        return [Fields(item, self.where, self.name(key) + f"[{i}]") for i, item in enumerate(items)]

    def ints(self, key: str) -> tuple[int, ...]:
        values = self.get(key, list)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise self.error(key, f"is {values!r}, expected a list of integers")
        return tuple(values)

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.get(key, str)
        if value not in allowed:
            raise self.error(key, f"is {value!r}, expected one of {allowed}")
        return value


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # symbols ("batch", "tokens", "src") as strings; axis 0 is the batch

    @classmethod
    def parse(cls, f: Fields) -> Tensor:
        shape = tuple(f.get("shape", list))
        if not all(isinstance(d, int | str) and not isinstance(d, bool) for d in shape):
            raise f.error("shape", f"is {list(shape)!r}, expected integers and symbols")
        return cls(f.get("name", str), f.choice("dtype", DTYPES), shape)


@dataclass(frozen=True)
class Graph:
    file: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @classmethod
    def parse(cls, f: Fields) -> Graph:
        return cls(f.get("file", str), tuple(Tensor.parse(t) for t in f.objects("inputs")),
                   tuple(Tensor.parse(t) for t in f.objects("outputs")))

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> Tensor | None:
        return next((t for t in self.outputs if t.name == name), None)


@dataclass(frozen=True)
class Reference:
    """An output of another graph, one row per stream (the encoder's ``state`` for the decoder)."""

    graph: str
    output: str

    @classmethod
    def parse(cls, f: Fields) -> Reference:
        return cls(f.get("graph", str), f.get("output", str))


@dataclass(frozen=True)
class State:
    """A recurrent state: a graph input fed at each step by the output it is paired with."""

    graph: str
    input: str
    output: str
    shape: tuple[int, ...]  # per stream, without the batch axis
    dtype: str
    initial: float | Reference  # a constant, or another graph's output row

    @classmethod
    def parse(cls, f: Fields) -> State:
        initial = f.get("initial", (int, float, dict))
        initial = Reference.parse(f.object("initial")) if isinstance(initial, dict) else float(initial)
        return cls(f.get("graph", str), f.get("input", str), f.get("output", str), f.ints("shape"),
                   f.choice("dtype", DTYPES), initial)


@dataclass(frozen=True)
class Context:
    """A per-stream constant fed to every step (the encoder outputs for attention), padded per batch."""

    graph: str
    input: str
    source: Reference
    shape: tuple[int | str, ...]  # per stream, without the batch axis; its first axis is the source length
    dtype: str
    pad_value: float | bool

    @classmethod
    def parse(cls, f: Fields) -> Context:
        return cls(f.get("graph", str), f.get("input", str), Reference.parse(f.object("from")),
                   Tensor.parse(Fields({"name": "", **f.data}, f.where, f.path)).shape, f.choice("dtype", DTYPES),
                   f.get("pad_value", (int, float, bool), 0))


@dataclass(frozen=True)
class SentimentPreprocessing:
    vocabulary: str  # file: {"token_pattern", "lowercase", "words"}
    lowercase: bool
    pad_id: int
    unk_id: int
    max_tokens: int  # tokens a text may have, Classify and StreamSentiment alike; a longer one is refused
    labels: tuple[str, ...]  # class index -> label; the last one is "positive"
    # Streams step through a ``chunk`` graph (ids ``[batch, tokens]``, ``lengths``, a probability per token) at most
    # this many tokens per run; 0: through a ``step`` graph, one token per run (version 1).
    chunk_tokens: int = 0

    FILES: ClassVar[tuple[str, ...]] = ("vocabulary",)  # fields that name files: they must be listed in ``files``

    @classmethod
    def parse(cls, f: Fields) -> SentimentPreprocessing:
        pre = cls(f.get("vocabulary", str), f.get("lowercase", bool, True), f.get("pad_id", int), f.get("unk_id", int),
                  f.get("max_tokens", int), tuple(f.get("labels", list)), f.get("chunk_tokens", int, 0))
        if pre.chunk_tokens < 0:
            raise f.error("chunk_tokens", f"is {pre.chunk_tokens}, expected a positive integer (or 0: a step graph)")
        return pre

    @property
    def stream_graph(self) -> str:
        """The stateful graph that streams run: ``chunk`` or ``step``."""
        return "chunk" if self.chunk_tokens else "step"

    def stream_inputs(self, ids: Any, lengths: Any) -> dict[str, Any]:
        """One run's plain inputs of the stream graph for pieces of streams, ``ids`` ``[rows, tokens]`` (int64,
        right-padded; ``lengths`` real, at most ``chunk_tokens``): the chunk graph takes them as they are, a step
        graph the first token of each row."""
        return {"ids": ids, "lengths": lengths} if self.chunk_tokens else {"ids": ids[:, 0]}

    @property
    def needs(self) -> Needs:
        stream = (("ids", "lengths"), ("probs",)) if self.chunk_tokens else (("ids",), ("probs",))
        return {"sequence": (("ids", "lengths"), ("probs",)), self.stream_graph: stream}


@dataclass(frozen=True)
class Scaling:
    context: int  # observations that set the scale
    eps: float
    transform: str  # "log" or "identity" (contract/forecast.py)
    floor: float

    @classmethod
    def parse(cls, f: Fields) -> Scaling:
        return cls(f.get("context", int), f.number("eps"), f.choice("transform", TRANSFORMS), f.number("floor"))


@dataclass(frozen=True)
class Combination:
    """The served median is ``weight * model + (1 - weight) * theta`` (``contract.forecast.adjust``)."""

    method: str  # "theta"
    weight: float  # of the model's median
    window: int  # the latest observed values the statistical forecast reads

    @classmethod
    def parse(cls, f: Fields) -> Combination:
        combination = cls(f.choice("method", ("theta",)), f.number("weight"), f.get("window", int))
        if not 0 <= combination.weight <= 1:
            raise f.error("weight", f"is {combination.weight}, expected a number in [0, 1]")
        if combination.window < 1:
            raise f.error("window", f"is {combination.window}, expected a positive integer")
        return combination


@dataclass(frozen=True)
class Calibration:
    """Quantile offsets at least ``floor`` noise units (``contract.forecast.adjust``)."""

    noise: str  # "seasonal_naive_mae"
    width: float
    floor: float
    growth: float
    window: int

    @classmethod
    def parse(cls, f: Fields) -> Calibration:
        calibration = cls(f.choice("noise", ("seasonal_naive_mae",)), f.number("width"), f.number("floor"),
                          f.number("growth"), f.get("window", int))
        for name in ("width", "floor", "growth"):
            if getattr(calibration, name) < 0:
                raise f.error(name, f"is {getattr(calibration, name)}, expected a number >= 0")
        if calibration.window < 2:
            raise f.error("window", f"is {calibration.window}, expected an integer >= 2")
        return calibration


@dataclass(frozen=True)
class ForecastPreprocessing:
    scaling: Scaling
    season: int
    lags: tuple[int, ...]
    quantiles: tuple[float, ...]
    min_history: int
    trained_horizon: int
    combination: Combination | None = None  # version 3's rules; absent: the model's quantiles as they are
    calibration: Calibration | None = None

    FILES: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, f: Fields) -> ForecastPreprocessing:
        quantiles = tuple(float(q) for q in f.get("quantiles", list))
        pre = cls(Scaling.parse(f.object("scaling")), f.get("season", int), f.ints("lags"), quantiles,
                  f.get("min_history", int), f.get("trained_horizon", int, 0),
                  Combination.parse(f.object("combination")) if "combination" in f.data else None,
                  Calibration.parse(f.object("calibration")) if "calibration" in f.data else None)
        if 0.5 not in pre.quantiles:
            raise f.error("quantiles", f"{list(pre.quantiles)} lacks the median 0.5 that is fed back")
        if pre.min_history < pre.prefix + 1:
            raise f.error("min_history", f"is {pre.min_history}, the lags need {pre.prefix + 1}")
        return pre

    @property
    def prefix(self) -> int:
        """Values before the first step's target, so that its lags exist."""
        return max(max(self.lags, default=1) - 1, 0)

    @property
    def median(self) -> int:
        return self.quantiles.index(0.5)

    @property
    def window(self) -> int:
        """The latest observed values (series units) that the version 3 rules read; 0 without them."""
        return max(self.combination.window if self.combination else 0,
                   self.calibration.window if self.calibration else 0)

    def adjust(self, quantiles: Any, history: Any) -> Any:
        """Decoded quantiles ``[horizon, Q]`` of one series after the rules (``contract.forecast.adjust``)."""
        return adjust(quantiles, history, self.quantiles, self.season, self.scaling.transform, self.combination,
                      self.calibration)

    def adjustment(self, history: Any, horizon: int) -> Adjustment:
        """The rules prepared for ``horizon`` steps after ``history``, to apply step by step."""
        return prepare(history, horizon, self.quantiles, self.season, self.scaling.transform, self.combination,
                       self.calibration)

    @property
    def features(self) -> int:
        return self.season + len(self.lags)

    @property
    def needs(self) -> Needs:
        return {"step": (("value", "features"), ("quantiles",))}


@dataclass(frozen=True)
class TranslationPreprocessing:
    subwords: str  # the sentencepiece model file
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int
    source_suffix: tuple[int, ...]
    output_length: OutputLength  # limits of the source and the output, in tokens
    length_penalty: float
    beam: int

    FILES: ClassVar[tuple[str, ...]] = ("subwords",)

    @classmethod
    def parse(cls, f: Fields) -> TranslationPreprocessing:
        rule = f.object("output_length")
        length = OutputLength(rule.get("per_source_token", int), rule.get("extra", int), rule.get("max_length", int))
        return cls(f.get("subwords", str), f.get("pad_id", int), f.get("unk_id", int), f.get("bos_id", int),
                   f.get("eos_id", int), f.ints("source_suffix"), length, f.number("length_penalty", 1.0),
                   f.get("beam", int, 5))

    @property
    def max_length(self) -> int:
        return self.output_length.max_length

    @property
    def needs(self) -> Needs:
        return {"encoder": (("src_ids", "src_lengths"), ()),
                "decoder_step": (("prev_tokens",), ("log_probs", "attention"))}


Preprocessing = SentimentPreprocessing | ForecastPreprocessing | TranslationPreprocessing
PREPROCESSING: dict[str, type[Preprocessing]] = {
    "sentiment": SentimentPreprocessing, "forecast": ForecastPreprocessing, "translation": TranslationPreprocessing}


@dataclass(frozen=True)
class Manifest:
    task: str | None  # None: no task, one step graph served generically with its state (``generic_graph``)
    description: str
    graphs: dict[str, Graph]
    state: tuple[State, ...]
    context: tuple[Context, ...]
    preprocessing: Preprocessing | None  # None without a task
    files: dict[str, str]  # file name -> sha256
    raw: dict[str, Any]  # the JSON as read: model, metrics and provenance are for people

    def state_of(self, graph: str) -> list[State]:
        return [s for s in self.state if s.graph == graph]

    def context_of(self, graph: str) -> list[Context]:
        return [c for c in self.context if c.graph == graph]

    def sources_of(self, graph: str) -> list[str]:
        """The graphs whose outputs start ``graph``'s state or fill its context (the encoder of a decoder)."""
        wired = [s.initial.graph for s in self.state_of(graph) if isinstance(s.initial, Reference)]
        return list(dict.fromkeys(wired + [c.source.graph for c in self.context_of(graph)]))

    @property
    def metrics(self) -> dict[str, Any]:
        return self.raw.get("metrics", {})

    @property
    def generic_graph(self) -> str:
        """The one step graph of a manifest without a task."""
        (name,) = self.graphs
        return name


def parse_manifest(data: Any, where: str) -> Manifest:
    """The validated manifest of ``data`` (parsed JSON); ``where`` names the file in errors."""
    f = Fields(data, where)
    if f.get("format", str) != MANIFEST_FORMAT:
        raise f.error("format", f"is {data['format']!r}, expected {MANIFEST_FORMAT!r}")
    task = f.choice("task", TASKS) if "task" in f.data else None
    if task is None and "preprocessing" in f.data:
        raise f.error("task", f"is missing: preprocessing belongs to a task {TASKS} (a manifest without a task is "
                              "a generic stateful step graph and has no preprocessing)")
    graphs = {name: Graph.parse(f.object("graphs").object(name)) for name in f.get("graphs", dict)}
    files = f.get("files", dict)
    for name in files:
        path = PurePosixPath(name)
        if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
            raise f.error("files", f"names {name!r}: a file must be a relative path inside the model's folder "
                                   "(no leading /, no '..')")
    preprocessing = PREPROCESSING[task].parse(f.object("preprocessing")) if task else None
    manifest = Manifest(
        task, f.get("description", str, ""), graphs, tuple(State.parse(s) for s in f.objects("state", [])),
        tuple(Context.parse(c) for c in f.objects("context", [])), preprocessing, files, data)
    _check_wiring(manifest, f)
    if task is None:
        _check_generic(manifest, f)
    return manifest


def _check_generic(m: Manifest, f: Fields) -> None:
    """A manifest without a task: one step graph, its state pairs declared, each starting from a number."""
    if len(m.graphs) != 1:
        raise f.error("graphs", f"has {sorted(m.graphs)}: a manifest without a task serves exactly one step graph")
    if not m.state:
        raise f.error("state", "is missing or empty: a manifest without a task is served as a stateful step graph, "
                               "so it must pair each state input with the output that feeds it")
    if m.context:
        raise f.error("context", "is only for task models: a manifest without a task has no context tensors")
    for index, state in enumerate(m.state):
        if isinstance(state.initial, Reference):
            raise ManifestError(f"{f.where}: state[{index}].initial names a graph output: without a task, "
                                "a state starts from a number")


def _check_wiring(m: Manifest, f: Fields) -> None:
    """Graph files are listed, state pairs and references exist, and the task's graphs have its tensors."""
    for name, graph in m.graphs.items():
        if graph.file not in m.files:
            raise ManifestError(f"{f.where}: graphs.{name}.file {graph.file!r} is not listed in 'files'")
    if m.preprocessing is not None:
        for name in type(m.preprocessing).FILES:
            if (file := getattr(m.preprocessing, name)) not in m.files:
                raise ManifestError(f"{f.where}: preprocessing.{name} {file!r} is not listed in 'files'")
    needs: Needs = m.preprocessing.needs if m.preprocessing else {}
    for name, (inputs, outputs) in needs.items():
        graph = m.graphs.get(name)
        if graph is None:
            needed = sorted(needs)
            raise ManifestError(f"{f.where}: graphs.{name} is missing (a {m.task} model needs graphs {needed})")
        for kind, names in (("inputs", inputs), ("outputs", outputs)):
            declared = [t.name for t in getattr(graph, kind)]
            if missing := [n for n in names if n not in declared]:
                raise ManifestError(f"{f.where}: graphs.{name}.{kind} lacks {missing} (a {m.task} model needs them)")
    for index, state in enumerate(m.state):
        here = f"{f.where}: state[{index}]"
        graph = m.graphs.get(state.graph)
        if graph is None:
            raise ManifestError(f"{here}.graph: {state.graph!r} is not a graph of this model")
        source, sink = graph.input(state.input), graph.output(state.output)
        if source is None:
            raise ManifestError(f"{here}.input: {state.input!r} is not an input of graph {state.graph!r}")
        if sink is None:
            raise ManifestError(f"{here}.output: state {state.input!r} has no paired output "
                                f"({state.output!r} is not an output of graph {state.graph!r})")
        for tensor, role in ((source, "input"), (sink, "output")):
            if tensor.dtype != state.dtype or tuple(tensor.shape[1:]) != state.shape:
                raise ManifestError(f"{here}: {role} {tensor.name!r} is {tensor.dtype}{list(tensor.shape)}, "
                                    f"the state says {state.dtype}[batch, {list(state.shape)}]")
        if isinstance(state.initial, Reference):
            _check_reference(m, state.initial, f"{here}.initial")
    for index, context in enumerate(m.context):
        here = f"{f.where}: context[{index}]"
        graph = m.graphs.get(context.graph)
        tensor = None if graph is None else graph.input(context.input)
        if tensor is None:
            raise ManifestError(f"{here}.input: {context.input!r} is not an input of graph {context.graph!r}")
        if tensor.dtype != context.dtype or tensor.shape[1:] != context.shape:
            raise ManifestError(f"{here}: input {tensor.name!r} is {tensor.dtype}{list(tensor.shape)}, "
                                f"the context says {context.dtype}[batch, {list(context.shape)}]")
        _check_reference(m, context.source, f"{here}.from")
    if isinstance(m.preprocessing, ForecastPreprocessing):
        features = m.graphs["step"].input("features")
        if tuple(features.shape[1:]) != (m.preprocessing.features,):
            raise ManifestError(f"{f.where}: graphs.step input features is {list(features.shape)}, season and lags "
                                f"make {m.preprocessing.features} columns")


def _check_reference(m: Manifest, reference: Reference, here: str) -> None:
    graph = m.graphs.get(reference.graph)
    if graph is None or graph.output(reference.output) is None:
        raise ManifestError(f"{here}: {reference.graph!r}.{reference.output!r} is not a graph output")
