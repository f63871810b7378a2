"""Hot reload (docs/server.md, Hot reload) against ``python -m server`` on a temporary copy of the sentiment model.

Version 2 (a copy of version 1 with another description) is added under open streams: none is dropped, each
finishes on version 1 with the output of an undisturbed run, and new calls get version 2. A version removed
from disk while a stream uses it serves that stream to its end, then unloads. Corrupt versions are refused
with the file and field named, and serving goes on. ``Models.Reload`` loads with polling off, and needs the
bearer token when the server has one.
"""

from __future__ import annotations

import bz2
import csv
import itertools
import json
import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from servers import MODELS, Process, wait_for
from test_kserve import text_input

from client import Client
from client.__main__ import main as cli
from protos.inference import kserve_pb2, kserve_pb2_grpc
from protos.seqserve.v1 import common_pb2, sentiment_pb2

pytestmark = pytest.mark.skipif(not (MODELS / "sentiment" / "1").is_dir(), reason=f"no sentiment model in {MODELS}")
POLL_S = "0.2"
STREAMS = 8


def snippets(data_dir: Path, count: int) -> list[list[str]]:
    """The words of the first ``count`` labelled Rotten Tomatoes snippets."""
    path = data_dir / "sentiment" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = (row["text"].split() for row in csv.DictReader(handle) if row["category"] in ("fresh", "rotten"))
        return list(itertools.islice((words for words in rows if len(words) >= 6 and words[0].isalpha()), count))


def add_version(repository: Path, version: int, edit=None, source: int = 1) -> Path:
    """Copy version ``source`` of the sentiment model to ``version`` (another description; ``edit(folder)``
    changes more) and move it in at once, as docs/server.md asks."""
    staged = repository.parent / f"staging-{version}"
    shutil.copytree(repository / "sentiment" / str(source), staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    manifest["description"] = f"version {version} of the test"
    (staged / "manifest.json").write_text(json.dumps(manifest))
    if edit:
        edit(staged)
    return staged.rename(repository / "sentiment" / str(version))


class Stream:
    """A ``StreamSentiment`` call fed one word at a time; ``first`` waits for the first word's first update."""

    def __init__(self, client: Client, version: int = 0) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.ref = common_pb2.ModelRef(name="sentiment", version=version)
        self.updates = client.sentiment.StreamSentiment(iter(self.requests.get, None), timeout=120)
        self.sent = 0

    def send(self, *words: str) -> None:
        for word in words:
            self.requests.put(sentiment_pb2.SentimentChunk(model=self.ref if self.sent == 0 else None,
                                                           text=word + " "))
            self.sent += 1

    def first(self, word: str) -> list[list[float]]:
        self.send(word)
        return [list(next(self.updates).probabilities)]

    def close(self) -> list[list[float]]:
        """Every update not read yet, once the server has finished the stream."""
        self.requests.put(None)
        return [list(update.probabilities) for update in self.updates]


def run(client: Client, words: list[str], version: int = 0) -> list[list[float]]:
    stream = Stream(client, version)
    stream.send(*words)
    return stream.close()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reload") / "models"
    shutil.copytree(MODELS / "sentiment" / "1", root / "sentiment" / "1")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Process]:
    process = Process("--models", str(repository), "--reload-interval-s", POLL_S, "--max-streams", "32")
    yield process
    process.stop()


def served_version(client: Client) -> int:
    return client.classify(["fine"]).version


def sequence_step(triton_client: triton.InferenceServerClient, sequence_id: str, chunk: str, version: str = "",
                  **flags: bool) -> str:
    """One request of a KServe sentiment sequence; the version that answered it."""
    result = triton_client.infer("sentiment", [text_input(chunk)], model_version=version, sequence_id=sequence_id,
                                 **flags)
    return result.get_response().model_version


def slots(server: Process, version: int) -> float:
    return server.sample("seqserve_stream_slots_in_use", model="sentiment", version=str(version))


def loaded(server: Process) -> set[str]:
    """The versions in ``seqserve_model_info``."""
    return {line.split('version="')[1].split('"')[0] for line in server.metrics().splitlines()
            if line.startswith("seqserve_model_info{")}


def test_a_new_version_under_open_streams_drops_none_and_serves_new_calls(server: Process, repository: Path,
                                                                         data_dir: Path) -> None:
    texts = snippets(data_dir, STREAMS)
    with Client(server.target, timeout=30) as client:
        expected = [run(client, words) for words in texts]  # undisturbed, on version 1
        assert served_version(client) == 1 and loaded(server) == {"1"}
        streams = [Stream(client) for _ in texts]
        got = [stream.first(words[0]) for stream, words in zip(streams, texts, strict=True)]
        triton_client = triton.InferenceServerClient(server.target)
        assert sequence_step(triton_client, "before", "a moving", sequence_start=True) == "1"
        assert slots(server, 1) == STREAMS + 1

        versions: list[int] = []  # of back-to-back Classify calls during the reload: none fails
        stop = threading.Event()
        classify = threading.Thread(target=lambda: [versions.append(served_version(client))
                                                    for _ in iter(stop.is_set, True)])
        classify.start()
        add_version(repository, 2)
        assert wait_for(lambda: versions[-1:] == [2], 20), "version 2 was not loaded"
        stop.set()
        classify.join(30)
        assert versions == sorted(versions) and versions[0] == 1  # switched once, never back
        assert client.get_model("sentiment").description == "version 2 of the test"
        assert loaded(server) == {"1", "2"}
        assert server.sample("seqserve_reloads_total", model="sentiment", outcome="loaded") == 1

        newcomer = Stream(client)  # a new stream that names no version gets version 2
        newcomer.first(texts[0][0])
        assert slots(server, 2) == 1 and slots(server, 1) == STREAMS + 1
        assert sequence_step(triton_client, "after", "a moving", sequence_start=True) == "2"
        # a sequence stays on the version it started on
        assert sequence_step(triton_client, "before", " film", sequence_end=True) == "1"
        assert sequence_step(triton_client, "after", " film", sequence_end=True) == "2"
        for stream, words, out in zip(streams, texts, got, strict=True):
            stream.send(*words[1:])
            out += stream.close()
        assert got == expected  # every stream finished, on version 1, as if nothing had happened
        newcomer.close()
        assert wait_for(lambda: slots(server, 1) == 0 and slots(server, 2) == 0)
    assert any("hot reload: loaded sentiment/2" in line for line in server.lines)


def test_a_version_removed_under_a_stream_serves_it_to_the_end_then_unloads(server: Process, repository: Path,
                                                                            data_dir: Path) -> None:
    words = snippets(data_dir, 1)[0]
    with Client(server.target, timeout=30) as client:
        assert wait_for(lambda: served_version(client) == 2, 20)
        expected = run(client, words, version=1)
        stream = Stream(client, version=1)
        got = stream.first(words[0])
        triton_client = triton.InferenceServerClient(server.target)
        assert sequence_step(triton_client, "pinned", "a moving", version="1", sequence_start=True) == "1"
        shutil.rmtree(repository / "sentiment" / "1")
        assert server.wait_for_sample("seqserve_reloads_total", 1, model="sentiment", outcome="retired")
        with pytest.raises(grpc.RpcError) as refused:
            client.get_model("sentiment", 1)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        kserve = kserve_pb2_grpc.GRPCInferenceServiceStub(client.channel)
        index = {(m.version, m.state) for m in kserve.RepositoryIndex(kserve_pb2.RepositoryIndexRequest()).models}
        assert index == {("2", "READY"), ("1", "UNLOADING")}
        assert loaded(server) == {"1", "2"}  # still loaded: the stream and the sequence use it
        assert sequence_step(triton_client, "pinned", " film", sequence_end=True) == "1"

        stream.send(*words[1:])
        got += stream.close()
        assert got == expected
        assert server.wait_for_sample("seqserve_reloads_total", 1, model="sentiment", outcome="unloaded")
        assert loaded(server) == {"2"}
        assert slots(server, 1) == 0 and 'version="1"' not in server.metrics()  # its gauges went with it
        index = {(m.version, m.state) for m in kserve.RepositoryIndex(kserve_pb2.RepositoryIndexRequest()).models}
        assert index == {("2", "READY")}


def corrupt_vocabulary(folder: Path) -> None:
    with (folder / "vocab.json").open("a") as handle:
        handle.write(" ")


def drop_format(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["format"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_corrupt_versions_are_refused_naming_file_and_field_and_serving_goes_on(server: Process,
                                                                              repository: Path) -> None:
    add_version(repository, 3, corrupt_vocabulary, source=2)
    add_version(repository, 4, drop_format, source=2)
    assert server.wait_for_sample("seqserve_reloads_total", 2, model="sentiment", outcome="refused")
    refusals = [line for line in server.lines if "hot reload: refused" in line]
    assert any("3/manifest.json: files.vocab.json: sha256 mismatch" in line for line in refusals), refusals
    assert any("4/manifest.json" in line and "format" in line for line in refusals), refusals
    with Client(server.target, timeout=30) as client:
        assert served_version(client) == 2 and loaded(server) == {"2"}
        response = client.reload()  # refusals stand, not retried unchanged
        assert not response.loaded and not response.retired
        assert sorted(Path(r.folder).name for r in response.refused) == ["3", "4"]
        kserve = kserve_pb2_grpc.GRPCInferenceServiceStub(client.channel)
        states = {m.version: (m.state, m.reason) for m in
                  kserve.RepositoryIndex(kserve_pb2.RepositoryIndexRequest()).models}
        assert states["3"][0] == "UNAVAILABLE" and "files.vocab.json" in states["3"][1]
    assert server.sample("seqserve_reloads_total", model="sentiment", outcome="refused") == 2

    shutil.rmtree(repository / "sentiment" / "3")  # the operator fixes version 3: it is loaded
    add_version(repository, 3, source=2)
    assert server.wait_for_sample("seqserve_reloads_total", 2, model="sentiment", outcome="loaded")
    with Client(server.target, timeout=30) as client:
        assert served_version(client) == 3


def test_reload_call_loads_with_polling_off_and_needs_the_token(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "models"
    shutil.copytree(MODELS / "sentiment" / "1", repository / "sentiment" / "1")
    server = Process("--models", str(repository), "--reload-interval-s", "0", "--auth-token", "admin-secret")
    try:
        add_version(repository, 2)
        with Client(server.target, timeout=30) as anonymous:
            with pytest.raises(grpc.RpcError) as refused:
                anonymous.reload()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(server.target, timeout=60, token="admin-secret") as admin:
            assert served_version(admin) == 1  # no polling: nothing changed by itself
            response = admin.reload()
            assert [(ref.name, ref.version) for ref in response.loaded] == [("sentiment", 2)]
            assert served_version(admin) == 2
            add_version(repository, 3, corrupt_vocabulary)
            with pytest.raises(SystemExit) as exited:  # the CLI, as a deploy script runs it
                cli(["--server", server.target, "--token", "admin-secret", "reload"])
            assert exited.value.code == 1
            assert "refused " + str(repository / "sentiment" / "3") + ": " in capsys.readouterr().out
            assert served_version(admin) == 2
    finally:
        server.stop()
