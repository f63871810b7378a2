"""The manifest schema (``contract/manifest.py``) and the shared rules, on the shipped manifests.

Every field of every shipped manifest is deleted in turn: a required one must fail with one
``ManifestError`` naming the file and the field; the fields that may be missing are listed here.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.forecast import decode, encode, fit_scale, step_inputs
from contract.manifest import ManifestError, parse_manifest
from contract.repository import read_manifest
from contract.translation import Beam, OutputLength, greedy_tokens
from contract.words import TOKEN_PATTERN, IncrementalWords, WordTokenizer, padded_groups, whole_tokens

MODELS = Path(__file__).resolve().parents[1] / "models"
TASKS = ("sentiment", "forecast", "translation")
# For people, or with a default: a manifest without them still loads.
OPTIONAL = {"description", "model", "metrics", "provenance", "state", "context", "graphs.*.opset",
            "context[].pad_value", "preprocessing.lowercase", "preprocessing.tokenizer",
            "preprocessing.trained_horizon", "preprocessing.length_penalty", "preprocessing.beam",
            "preprocessing.scaling.rule", "preprocessing.value", "preprocessing.features", "preprocessing.rollout"}


def generic(name: str) -> str:
    """``graphs.step.inputs[0].name`` -> ``graphs.*.inputs[].name``."""
    return re.sub(r"\[\d+\]", "[]", re.sub(r"^graphs\.[^.]+", "graphs.*", name))


def optional(name: str) -> bool:
    """The field or one above it may be missing."""
    parts = generic(name).split(".")
    return any(".".join(parts[:i]) in OPTIONAL for i in range(1, len(parts) + 1))


def fields(value: Any, path: str = "") -> Iterator[tuple[str, list[str | int]]]:
    """Every dict key below ``value``: its dotted name and its key path."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        name = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        keys = [key]
        if isinstance(key, str):
            yield name, keys
        for sub_name, sub_keys in fields(child, name):
            yield sub_name, keys + sub_keys


def without(data: dict, keys: list[str | int]) -> dict:
    changed = copy.deepcopy(data)
    parent = changed
    for key in keys[:-1]:
        parent = parent[key]
    del parent[keys[-1]]
    return changed


@pytest.mark.parametrize("task", TASKS)
def test_a_missing_required_field_is_named_with_the_file(task: str) -> None:
    where = f"models/{task}/1/manifest.json"
    data = json.loads((MODELS / task / "1" / "manifest.json").read_text())
    parse_manifest(data, where)
    checked = 0
    for name, keys in fields(data):
        if optional(name) or (keys[0] == "files" and len(keys) > 1):
            continue
        with pytest.raises(ManifestError) as error:
            parse_manifest(without(data, keys), where)
        message = str(error.value)
        assert message.startswith(f"{where}: ") and name in message, (name, message)
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("task", TASKS)
def test_optional_fields_may_be_missing(task: str) -> None:
    data = json.loads((MODELS / task / "1" / "manifest.json").read_text())
    dropped = [keys for name, keys in fields(data) if generic(name) in OPTIONAL]
    assert dropped
    for keys in dropped:
        parse_manifest(without(data, keys), "m.json")  # loads


def test_wrong_values_are_named() -> None:
    data = json.loads((MODELS / "forecast" / "1" / "manifest.json").read_text())
    cases = {
        ("format",): ("seqserve-manifest/0", "format is 'seqserve-manifest/0'"),
        ("task",): ("poetry", "task is 'poetry', expected one of"),
        ("preprocessing", "scaling", "transform"): ("sqrt", "preprocessing.scaling.transform is 'sqrt'"),
        ("preprocessing", "quantiles"): ([0.1, 0.9], "lacks the median 0.5"),
        ("preprocessing", "lags"): ([12, "13"], "preprocessing.lags is"),
        ("preprocessing", "season"): (True, "preprocessing.season is True, expected int"),
        ("preprocessing", "min_history"): (3, "preprocessing.min_history is 3, the lags need 24"),
        ("state",): ([{"graph": "step", "input": "h", "output": "nope", "shape": [10, 64], "dtype": "float32",
                       "initial": 0.0}], "has no paired output"),
    }
    for keys, (value, expected) in cases.items():
        changed = copy.deepcopy(data)
        parent = changed
        for key in keys[:-1]:
            parent = parent[key]
        parent[keys[-1]] = value
        with pytest.raises(ManifestError, match=r"^m\.json: ") as error:
            parse_manifest(changed, "m.json")
        assert expected in str(error.value), (keys, str(error.value))


def test_output_length_works_on_ints_arrays_and_a_cap() -> None:
    rule = OutputLength(2, 10, 120)
    assert rule.limit(3) == 16 and rule.limit(100) == 120 and rule.limit(3, cap=12) == 12
    np.testing.assert_array_equal(rule.limit(np.array([1, 60])), [12, 120])
    assert rule.source([5, 6, 7], (3,)) == [5, 6, 7, 3]
    assert OutputLength(2, 10, 3).source([5, 6, 7], (3,)) == [5, 6, 7]


def test_greedy_forces_eos_at_the_limit_and_beam_keeps_the_best() -> None:
    log_probs = np.log(np.array([[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]]))
    np.testing.assert_array_equal(greedy_tokens(log_probs, np.array([0, 4]), np.array([5, 5]), eos=3), [2, 3])
    beam = Beam(2, eos=3, penalty=1.0)
    origin, token, chosen = beam.advance(np.repeat(log_probs[:1], 2, axis=0), at_limit=False)
    np.testing.assert_array_equal(origin, [0, 0])  # both from the first row: all rows start identical
    np.testing.assert_array_equal(token, [2, 1])
    np.testing.assert_allclose(chosen, np.log([0.6, 0.2]))
    origin, token, _ = beam.advance(log_probs, at_limit=True)
    assert token.tolist() == [3, 3] and beam.done


def test_forecast_scaling_round_trips_and_step_inputs_read_the_lags() -> None:
    history = np.array([10.0, 20.0, 30.0, 40.0])
    scale = fit_scale(history, 2, eps=0.0)
    assert scale == 35.0
    z = encode(history, scale, "log")
    np.testing.assert_allclose(decode(z, scale, "log"), history)
    inputs = step_inputs(np.arange(24, dtype=np.float64)[None], np.array([13]), 12, (12, 13, 24))
    assert inputs["value"].tolist() == [[23.0]]
    assert inputs["features"][0, :12].tolist() == [0, 1] + [0] * 10  # month 13 = February
    assert inputs["features"][0, 12:].tolist() == [12.0, 11.0, 0.0]


def generic_manifest() -> dict:
    """A manifest without a task: one step graph and its state pair (docs/manifest.md, "Your own step graph")."""
    def tensor(name: str, size: int) -> dict:
        return {"name": name, "dtype": "float32", "shape": ["batch", size]}

    return {"format": "seqserve-manifest/1",
            "graphs": {"step": {"file": "step.onnx", "inputs": [tensor("x", 4), tensor("h", 8)],
                                "outputs": [tensor("y", 3), tensor("h_next", 8)]}},
            "state": [{"graph": "step", "input": "h", "output": "h_next", "shape": [8], "dtype": "float32",
                       "initial": 0.0}],
            "files": {"step.onnx": "0" * 64}}


def test_a_manifest_without_a_task_is_a_generic_step_graph() -> None:
    manifest = parse_manifest(generic_manifest(), "m.json")
    assert manifest.task is None and manifest.preprocessing is None and manifest.generic_graph == "step"
    data = generic_manifest()
    second = copy.deepcopy(data["graphs"]["step"])
    cases = [
        ({"preprocessing": {}}, "m.json: task is missing: preprocessing belongs to a task"),
        ({"state": []}, "m.json: state is missing or empty: a manifest without a task"),
        ({"graphs": {**data["graphs"], "other": second}}, "m.json: graphs has ['other', 'step']: a manifest without "
                                                          "a task serves exactly one step graph"),
        ({"context": [{"graph": "step", "input": "x", "from": {"graph": "step", "output": "y"}, "shape": [4],
                       "dtype": "float32"}]}, "m.json: context is only for task models"),
        ({"state": [{**data["state"][0], "initial": {"graph": "step", "output": "h_next"}}]},
         "m.json: state[0].initial names a graph output: without a task, a state starts from a number"),
    ]
    for change, expected in cases:
        with pytest.raises(ManifestError) as error:
            parse_manifest({**generic_manifest(), **change}, "m.json")
        assert str(error.value).startswith(expected), str(error.value)


@pytest.mark.parametrize("name", ["/etc/hostname", "../../../etc/hostname", "sub/../../x.onnx", "", "a\\..\\b"])
def test_manifest_files_stay_inside_the_model_folder(name: str) -> None:
    data = json.loads((MODELS / "sentiment" / "1" / "manifest.json").read_text())
    data["files"][name] = "0" * 64
    with pytest.raises(ManifestError, match=r"^m\.json: files names .*relative path inside the model's folder"):
        parse_manifest(data, "m.json")


def test_preprocessing_files_must_be_listed() -> None:
    data = json.loads((MODELS / "translation" / "1" / "manifest.json").read_text())
    data["preprocessing"]["subwords"] = "/etc/hostname"
    with pytest.raises(ManifestError, match=r"^m\.json: preprocessing.subwords '/etc/hostname' is not listed in"):
        parse_manifest(data, "m.json")


def test_a_file_linked_out_of_the_model_folder_is_refused(tmp_path: Path) -> None:
    """A listed file that is a symbolic link to elsewhere is not read (nor hashed)."""
    folder = tmp_path / "sentiment" / "1"
    shutil.copytree(MODELS / "sentiment" / "1", folder)
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (folder / "vocab.json").unlink()
    (folder / "vocab.json").symlink_to(outside)
    with pytest.raises(ManifestError, match=r"files\.vocab\.json: .* leads outside the model's folder"):
        read_manifest(folder)


def reference_words(tokenizer: WordTokenizer, text: str, limit: int) -> list[str]:
    """``IncrementalWords``' rule on the whole text: per run of non-whitespace, its tokens up to the first one longer
    than ``limit``, which is cut."""
    tokens = []
    for run in text.split():
        for token in tokenizer.tokens(run):
            tokens.append(token if len(token) <= limit else token[:limit] + "…")
            if len(token) > limit:
                break
    return tokens


def test_incremental_words_equal_the_whole_text_in_any_chunking_and_hold_little(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"token_pattern": TOKEN_PATTERN, "words": ["<pad>", "<unk>", "a", "it's", "good"]}))
    tokenizer = WordTokenizer(path, 1)
    with pytest.raises(ValueError, match="would cut vocabulary words"):
        IncrementalWords(tokenizer, 4)
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("aab'' ,.\n-xyz") for _ in range(rng.randint(0, 40)))
        text += rng.choice(["", " ", "a'"]) + "q" * rng.randint(3, 30) + rng.choice(["", "'", "'s", ",", " x", ", x"])
        limit = rng.randint(6, 12)
        words, tokens, start = IncrementalWords(tokenizer, limit), [], 0
        while start < len(text):
            size = rng.randint(0, 7)
            tokens += words.feed(text[start : start + size])
            start += size
            assert len(words.pending) <= limit + 1  # the held text is bounded, whatever arrives
        tokens += words.flush()
        assert tokens == reference_words(tokenizer, text, limit) == whole_tokens(tokenizer, text, limit), text
    assert reference_words(tokenizer, "It's good", 8) == tokenizer.tokens("It's good")  # no cut: the training rule


def test_incremental_words_hold_nothing_of_an_endless_word_or_of_spaces(tmp_path: Path) -> None:
    """What a hostile stream sends costs in proportion to itself: nothing of it accumulates."""
    words = IncrementalWords(WordTokenizer(MODELS / "sentiment" / "1" / "vocab.json", 1), 100)
    assert all(words.feed(" " * 5000) == [] and words.pending == "" for _ in range(300))
    assert words.feed("a" * 5000) == ["a" * 100 + "…"]
    assert all(words.feed("a" * 5000) == [] and words.pending == "" for _ in range(300))
    assert words.feed(" great film") == ["great"] and words.flush() == ["film"]


def test_padded_groups_cover_every_text_once_within_the_budget() -> None:
    rng = random.Random(0)
    for _ in range(500):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(0, 40))]
        budget = rng.randint(1, 2000)
        groups = padded_groups(lengths, budget)
        assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
        for group in groups:
            assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= budget
        # shortest first, and a group takes the next text whenever it fits
        order = [lengths[i] for group in groups for i in group]
        assert order == sorted(order)
        for group, after in itertools.pairwise(groups):
            assert (len(group) + 1) * lengths[after[0]] > budget
    assert padded_groups([5, 1, 5, 3], 10) == [[1, 3], [0, 2]]
