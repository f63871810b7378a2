"""The engine on fake ONNX Runtime sessions: slots, the batching window, the generation loop's
regathering, finishing and cancelled rows. No model files: each fake graph is a few numpy lines.

The fake model has the shape of a translation model. ``encoder``: ``state = [len, 0]`` and
``keys = src_ids`` (per source token). ``decoder_step``: ``new_state = state + [1, prev]``,
``log_probs`` = the new step count in every column, ``attention = keys``. So a row's outputs tell
which stream it is (its keys) and how many steps its own state has taken: mixing rows up or
losing state on a regather shows in the values.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from contract.manifest import parse_manifest
from contract.repository import Model
from server.config import Config
from server.engine import ModelRunner, Scheduler, StatePool, StepRequest, gather_all
from server.errors import Overloaded
from server.generation import END, Generator, Sequence, deliver
from server.graph import Graph, Lease, Slots
from server.metrics import Metrics

INT, FLOAT = "tensor(int64)", "tensor(float)"


class Arg:
    def __init__(self, name: str, kind: str) -> None:
        self.name, self.type = name, kind


class FakeSession:
    """The subset of ``ort.InferenceSession`` the engine uses; records every run's batch size."""

    def __init__(self, inputs: list[Arg], outputs: list[Arg], compute) -> None:
        self.inputs, self.outputs, self.compute = inputs, outputs, compute
        self.batches: list[int] = []
        self.kept: list[np.ndarray] = []

    def get_inputs(self) -> list[Arg]:
        return self.inputs

    def get_outputs(self) -> list[Arg]:
        return self.outputs

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(next(iter(feed.values()))))
        out = self.compute(feed)
        return [out[name] for name in (names or [o.name for o in self.outputs])]

    def io_binding(self) -> FakeBinding:
        return FakeBinding(self)

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        """Outputs as ORT values over copies, which stay alive: ``OrtValue.numpy()`` views the memory
        that ORT would own, without keeping a numpy source alive."""
        names = [o.name for o in self.outputs]
        arrays = [np.array(a, copy=True) for a in self.run(names, binding.feed)]
        self.kept.extend(arrays)
        binding.outputs = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]


class FakeBinding:
    def __init__(self, session: FakeSession) -> None:
        self.session, self.feed, self.outputs = session, {}, []

    def bind_ortvalue_input(self, name: str, value: ort.OrtValue) -> None:
        self.feed[name] = value.numpy()

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self.feed[name] = array

    def bind_output(self, name: str, device: str) -> None:
        pass

    def get_outputs(self) -> list[ort.OrtValue]:
        return self.outputs


def encoder(feed):
    lengths = feed["src_lengths"].astype(np.float32)
    return {"keys": feed["src_ids"].astype(np.float32),
            "state": np.stack([lengths, np.zeros_like(lengths)], axis=1)}


def decoder(feed):
    state = feed["state"] + np.stack([np.ones(len(feed["prev_tokens"])), feed["prev_tokens"]], 1).astype(np.float32)
    return {"log_probs": np.repeat(state[:, :1], 4, axis=1), "new_state": state, "attention": feed["keys"]}


def slow_decoder(feed):
    time.sleep(0.002)
    return decoder(feed)


MANIFEST = {
    "format": "seqserve-manifest/1", "task": "translation", "files": {"e.onnx": "", "d.onnx": "", "spm.model": ""},
    "graphs": {
        "encoder": {"file": "e.onnx", "inputs": [{"name": "src_ids", "dtype": "int64", "shape": ["batch", "src"]},
                                                 {"name": "src_lengths", "dtype": "int64", "shape": ["batch"]}],
                    "outputs": [{"name": "keys", "dtype": "float32", "shape": ["batch", "src"]},
                                {"name": "state", "dtype": "float32", "shape": ["batch", 2]}]},
        "decoder_step": {"file": "d.onnx",
                         "inputs": [{"name": "prev_tokens", "dtype": "int64", "shape": ["batch"]},
                                    {"name": "state", "dtype": "float32", "shape": ["batch", 2]},
                                    {"name": "keys", "dtype": "float32", "shape": ["batch", "src"]}],
                         "outputs": [{"name": "log_probs", "dtype": "float32", "shape": ["batch", 4]},
                                     {"name": "new_state", "dtype": "float32", "shape": ["batch", 2]},
                                     {"name": "attention", "dtype": "float32", "shape": ["batch", "src"]}]}},
    "state": [{"graph": "decoder_step", "input": "state", "output": "new_state", "shape": [2], "dtype": "float32",
               "initial": {"graph": "encoder", "output": "state"}}],
    "context": [{"graph": "decoder_step", "input": "keys", "from": {"graph": "encoder", "output": "keys"},
                 "shape": ["src"], "dtype": "float32", "pad_value": -1.0}],
    "preprocessing": {"subwords": "spm.model", "pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3,
                      "source_suffix": [3], "output_length": {"per_source_token": 2, "extra": 10, "max_length": 50}},
}


def fake_model() -> tuple[Model, dict[str, FakeSession]]:
    sessions = {
        "encoder": FakeSession([Arg("src_ids", INT), Arg("src_lengths", INT)],
                               [Arg("keys", FLOAT), Arg("state", FLOAT)], encoder),
        "decoder_step": FakeSession([Arg("prev_tokens", INT), Arg("state", FLOAT), Arg("keys", FLOAT)],
                                    [Arg("log_probs", FLOAT), Arg("new_state", FLOAT), Arg("attention", FLOAT)],
                                    decoder),
    }
    return Model("fake", 1, Path("."), parse_manifest(MANIFEST, "fake/1/manifest.json"), sessions), sessions


def pick(outputs, steps, limits):
    """Emit (own step count, attention row); the next token is the step number; done at the limit."""
    counts = outputs["log_probs"][:, 0]
    done = steps + 1 >= limits
    results = [(int(c), a) for c, a in zip(counts.tolist(), outputs["attention"], strict=True)]
    return {"prev_tokens": (steps + 1).astype(np.int64)}, results, done


def source(ids: list[int]) -> dict[str, dict[str, np.ndarray]]:
    return {"encoder": {"src_ids": np.array([ids], dtype=np.int64), "src_lengths": np.array([len(ids)])}}


def first_token() -> dict[str, np.ndarray]:
    return {"prev_tokens": np.array([0], dtype=np.int64)}


def generator(config: Config) -> tuple[Generator, Graph, dict[str, FakeSession]]:
    model, sessions = fake_model()
    metrics = Metrics()
    graph, encoder_graph = Graph(model, "decoder_step", config, metrics), Graph(model, "encoder", config, metrics)
    return Generator(graph, {"encoder": encoder_graph}, ["log_probs", "attention"], pick), graph, sessions


def new_slots(capacity: int) -> Slots:
    return Slots(capacity, "model 'fake' version 1 (step)")


def test_slots_limit_streams_and_defer_rows_of_a_running_batch() -> None:
    slots = new_slots(3)
    taken = slots.acquire(2)
    with pytest.raises(Overloaded, match=r"model 'fake' version 1 \(step\): 2 stream slots wanted, 1 of 3 free: "
                                         "retry later, or raise max_streams"):
        slots.acquire(2)
    slots.batch_started(taken)
    slots.release(taken)  # the batch has not written its state back yet: the rows stay taken
    assert slots.in_use == 2 and len(slots.acquire(1)) == 1
    with pytest.raises(Overloaded):
        slots.acquire(1)
    slots.batch_done(taken)
    assert slots.in_use == 1
    assert len(slots.acquire(2)) == 2


def test_a_lease_is_split_and_given_back_once() -> None:
    slots = new_slots(6)
    with slots.lease(6) as lease:
        parts = lease.split(3)
        assert [len(p.rows) for p in parts] == [2, 2, 2] and slots.in_use == 6
        parts[0].release()
        parts[0].release()  # twice: still two rows given back, not four
        assert slots.in_use == 4
    assert slots.in_use == 0
    lease.release()
    assert slots.in_use == 0


def test_gather_all_cancels_the_others_when_one_fails() -> None:
    async def scenario() -> None:
        ended = []

        async def slow(name: str) -> str:
            try:
                await asyncio.sleep(10)
            finally:
                ended.append(name)
            return name

        async def failing() -> None:
            await asyncio.sleep(0.01)
            raise ValueError("bad text")

        started = time.perf_counter()
        with pytest.raises(ValueError, match="bad text"):
            await gather_all([slow("a"), failing(), slow("b")])
        assert sorted(ended) == ["a", "b"] and time.perf_counter() - started < 5  # ended before the error came
        assert await gather_all([asyncio.sleep(0, "x"), asyncio.sleep(0, "y")]) == ["x", "y"]

    asyncio.run(scenario())


def test_scheduler_batches_within_the_window_up_to_max_batch() -> None:
    async def scenario(wait_ms: float, spacing: float) -> list[int]:
        model, sessions = fake_model()
        config = Config(max_wait_ms=wait_ms, max_batch=4, max_streams=8)
        runner = ModelRunner(model, config, Metrics())
        runner.start()
        try:
            async def one(delay: float, rows: int):
                await asyncio.sleep(delay)
                return await runner.run("encoder", {"src_ids": np.ones((rows, 3), np.int64),
                                                    "src_lengths": np.full(rows, 3)})
            outputs = await asyncio.gather(one(0, 1), one(spacing, 1), one(2 * spacing, 2), one(3 * spacing, 2))
        finally:
            await runner.stop()
        assert [len(o["keys"]) for o in outputs] == [1, 1, 2, 2]
        return sessions["encoder"].batches

    assert asyncio.run(scenario(wait_ms=200, spacing=0.01)) == [4, 2]  # the window gathers up to max_batch rows
    # no window: whatever is queued runs at once (arrivals 0.1 s apart: a loaded machine keeps them apart)
    assert asyncio.run(scenario(wait_ms=0, spacing=0.1)) == [1, 1, 2, 2]


def test_scheduler_skips_requests_cancelled_while_queued_and_keeps_state_per_slot() -> None:
    async def scenario() -> None:
        model, sessions = fake_model()
        graph = Graph(model, "decoder_step", Config(max_streams=4), Metrics())
        pool = StatePool(graph)
        scheduler = Scheduler(graph, pool)
        slots = graph.slots.acquire(2)
        pool.initialize(slots, {"encoder": {"state": np.array([[5.0, 0.0]], np.float32)}})
        keys = {"keys": np.zeros((1, 2), np.float32)}
        loop = asyncio.get_running_loop()
        gone = StepRequest({"prev_tokens": np.array([1]), **keys}, slots[:1], loop.create_future())
        gone.future.cancel()
        scheduler.queue.put_nowait(gone)
        scheduler.start()
        out = await scheduler.submit({"prev_tokens": np.array([7]), **keys}, slots[1:])
        await scheduler.stop()
        assert sessions["decoder_step"].batches == [1]
        assert out["log_probs"][0, 0] == 6.0  # the slot's own state: 5 + one step
        np.testing.assert_array_equal(pool.arrays["state"][slots], [[5, 0], [6, 7]])

    asyncio.run(scenario())


def test_generator_sequences_finish_at_their_limits_with_their_own_state_and_context() -> None:
    async def scenario() -> None:
        gen, graph, sessions = generator(Config(max_batch=8, max_streams=8))
        gen.start()
        sources = [[5, 6, 7], [8], [9, 10]]
        limits = [4, 1, 6]

        async def one(ids: list[int], limit: int):
            with gen.open(source(ids), first_token(), limit, graph.slots.lease(1)) as sequence:
                return [item async for chunk in sequence.chunks(2) for item in chunk]

        results = await asyncio.gather(*(one(ids, limit) for ids, limit in zip(sources, limits, strict=True)))
        await gen.stop()
        for ids, limit, got in zip(sources, limits, results, strict=True):
            assert [count for count, _ in got] == [len(ids) + step for step in range(1, limit + 1)]
            for _, attention in got:
                np.testing.assert_array_equal(attention[: len(ids)], ids)  # its own keys, padding after
                assert (attention[len(ids):] == -1).all()
        assert graph.slots.in_use == 0
        assert sessions["encoder"].batches == [3]  # one prefill for all three
        # 3 rows until the 1-step row ends, 2 until the 4-step one ends, then 1
        assert sessions["decoder_step"].batches == [3, 2, 2, 2, 1, 1]

    asyncio.run(scenario())


def test_generator_admits_waiting_sequences_as_rows_finish_and_drops_closed_ones() -> None:
    async def scenario() -> None:
        gen, graph, sessions = generator(Config(max_batch=2, max_streams=8))
        sessions["decoder_step"].compute = slow_decoder
        gen.start()

        async def one(ids: list[int], limit: int, stop_after: int | None = None):
            got = []
            with gen.open(source(ids), first_token(), limit, graph.slots.lease(1)) as sequence:
                async for chunk in sequence.chunks(1):
                    got += chunk
                    if stop_after is not None and len(got) >= stop_after:
                        break  # the client went away: the row leaves before its next step
            return got

        results = await asyncio.gather(one([4], 3), one([5, 6], 400, stop_after=2), one([7, 8, 9], 2))
        await gen.stop()
        assert [count for count, _ in results[0]] == [2, 3, 4]
        assert [count for count, _ in results[2]] == [4, 5]  # joined later, from its own encoder state
        assert max(sessions["decoder_step"].batches) <= 2
        assert sum(sessions["decoder_step"].batches) < 3 + 400 + 2  # the abandoned row stopped early
        assert graph.slots.in_use == 0

    asyncio.run(scenario())


def test_generator_rows_that_join_where_others_left_keep_their_own_state_and_context() -> None:
    """Rows leave and join at almost every step (``Batch.replace``): joining rows take the places of rows that left
    (shorter sources padded in place, longer ones re-gathered), the rows left over are compacted; every sequence
    still sees only its own state and keys, padded with the context's pad."""
    async def scenario() -> None:
        gen, graph, sessions = generator(Config(max_batch=4, max_streams=16))
        gen.start()
        sources = [list(range(10, 10 + n)) for n in (3, 1, 5, 2, 6, 1, 4, 2, 3, 7, 1, 2)]
        limits = [2, 5, 1, 3, 2, 4, 1, 6, 2, 3, 1, 2]

        async def one(ids: list[int], limit: int):
            with gen.open(source(ids), first_token(), limit, graph.slots.lease(1)) as sequence:
                return [item async for chunk in sequence.chunks(1) for item in chunk]

        results = await asyncio.gather(*(one(ids, limit) for ids, limit in zip(sources, limits, strict=True)))
        await gen.stop()
        for ids, limit, got in zip(sources, limits, results, strict=True):
            assert [count for count, _ in got] == [len(ids) + step for step in range(1, limit + 1)]
            for _, attention in got:
                np.testing.assert_array_equal(attention[: len(ids)], ids)
                assert (attention[len(ids):] == -1).all()
        assert max(sessions["decoder_step"].batches) == 4 and graph.slots.in_use == 0
        assert sum(sessions["decoder_step"].batches) == sum(limits)  # no row stepped after its end

    asyncio.run(scenario())


def test_generator_regathers_only_when_its_rows_change(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        gen, graph, _ = generator(Config(max_batch=8, max_streams=8))
        calls = []  # of the schedules that ran a step: whether the batch was rebuilt
        original = gen.schedule.__func__

        def counting(self, batch):
            new = original(self, batch)
            if new is not None:
                calls.append(new is not batch)
            return new

        monkeypatch.setattr(Generator, "schedule", counting)
        gen.start()
        with gen.open(source([1, 2]), first_token(), 5, graph.slots.lease(1)) as sequence:
            assert len([item async for chunk in sequence.chunks(8) for item in chunk]) == 5
        await gen.stop()
        assert calls == [True, False, False, False, False]  # built once, then reused for each step

    asyncio.run(scenario())


def test_generator_full_slots_and_a_failing_step() -> None:
    async def scenario() -> None:
        gen, graph, sessions = generator(Config(max_batch=4, max_streams=1))
        gen.start()
        with gen.open(source([1]), first_token(), 3, graph.slots.lease(1)), pytest.raises(Overloaded):
            graph.slots.lease(1)
        sessions["decoder_step"].compute = lambda feed: 1 / 0
        failing = gen.open(source([3]), first_token(), 3, graph.slots.lease(1))
        with failing as sequence, pytest.raises(ZeroDivisionError):
            async for _ in sequence.chunks(1):
                pass
        sessions["decoder_step"].compute = decoder  # the loop survived the failure
        with gen.open(source([3]), first_token(), 2, graph.slots.lease(1)) as sequence:
            assert len([item async for chunk in sequence.chunks(1) for item in chunk]) == 2
        await gen.stop()
        assert graph.slots.in_use == 0

    asyncio.run(scenario())


def test_a_decoded_sequence_gives_its_slot_back_before_its_results_are_read() -> None:
    """A client that reads slowly (or never) holds memory for its results, not a stream slot."""

    async def scenario() -> None:
        gen, graph, _ = generator(Config(max_batch=4, max_streams=1))
        gen.start()
        with gen.open(source([1, 2]), first_token(), 5, graph.slots.lease(1)) as sequence:
            for _ in range(500):  # the generator decodes all five steps; nothing has been read yet
                if graph.slots.in_use == 0:
                    break
                await asyncio.sleep(0.01)
            assert graph.slots.in_use == 0 and sequence.results.qsize() == 6  # five results and the end
            with graph.slots.lease(1):  # another stream can start
                pass
            assert len([item async for chunk in sequence.chunks(8) for item in chunk]) == 5
        await gen.stop()

    asyncio.run(scenario())


def test_filled_messages_keep_their_sizes_when_the_reader_lags() -> None:
    """With ``fill``: the first result alone, then ``most`` a list, the rest at the end, also when the stream reads
    only once every list has been delivered (a loaded machine)."""

    async def scenario() -> list[list[object]]:
        sequence = Sequence({}, {}, 10, Lease(Slots(1, "test"), np.array([0])))
        sequence.hold = 4  # as ``chunks(4, fill=True)`` sets it when the stream starts reading
        deliver([(sequence, token) for token in range(1, 11)] + [(sequence, END)])
        return [chunk async for chunk in sequence.chunks(4, fill=True)]

    assert asyncio.run(scenario()) == [[1], [2, 3, 4, 5], [6, 7, 8, 9], [10]]


def test_generator_step_and_wall_time_are_recorded() -> None:
    async def scenario() -> None:
        gen, graph, _ = generator(Config(max_batch=4, max_streams=4))
        gen.start()
        started = time.perf_counter()
        with gen.open(source([1, 2, 3]), first_token(), 3, graph.slots.lease(1)) as sequence:
            async for _ in sequence.chunks(4):
                pass
        await gen.stop()
        assert time.perf_counter() - started < 5
        text = graph.metrics.registry.get_sample_value(
            "seqserve_batch_size_count", {"model": "fake", "graph": "decoder_step"})
        assert text == 3

    asyncio.run(scenario())
