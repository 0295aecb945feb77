"""The batching engine and its policy, with a fake runner in place of the model (fast, deterministic)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from app.batching import select_batch
from app.engine import BatchingEngine, BatchPolicy, EngineClosed, QueueFull
from model.decoding import DecodeOptions
from model.recognizer import NBest, TranscriptionResult

RATE = 100  # a toy sample rate: a waveform of n samples lasts n / 100 s
BEAM1, BEAM2 = DecodeOptions(beam_size=1), DecodeOptions(beam_size=2)


class FakeRunner:
    """Echoes each waveform's first sample as its text; raises on a waveform whose first sample is -1."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[float]] = []
        self.gate = gate

    def __call__(self, audios, options):
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append([len(a) / RATE for a in audios])
        if any(a[0] == -1 for a in audios):
            raise RuntimeError("poisoned input")
        return [TranscriptionResult(str(int(a[0])), 0.0, (NBest(str(int(a[0])), 0.0),), len(a) / RATE) for a in audios]


def wave(tag: int, seconds: float = 1.0) -> np.ndarray:
    return np.full(int(seconds * RATE), tag, dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


def make(runner, **policy) -> BatchingEngine:
    engine = BatchingEngine(runner, BatchPolicy(**({"max_wait_s": 0.2, "idle_wait_s": 0.2} | policy)), sample_rate=RATE)
    engine.start()
    return engine


# ---------------------------------------------------------------------------- the policy alone


@dataclass
class Item:
    seconds: float
    options: object = BEAM1


def test_select_batch_takes_the_oldest_and_its_nearest_lengths() -> None:
    pending = [Item(2.0), Item(9.0), Item(2.3), Item(1.9), Item(8.0)]
    batch = select_batch(pending, max_items=3, max_padded_seconds=100)
    assert [i.seconds for i in batch] == [2.0, 1.9, 2.3]


def test_select_batch_respects_the_padded_budget_and_options() -> None:
    pending = [Item(5.0), Item(5.0, BEAM2), Item(6.5), Item(4.5), Item(30.0)]
    batch = select_batch(pending, max_items=8, max_padded_seconds=13)
    assert [i.seconds for i in batch] == [5.0, 4.5]  # 6.5 would pad to 3 x 6.5 > 13; BEAM2 never mixes
    assert select_batch([Item(50.0)], max_items=8, max_padded_seconds=13)[0].seconds == 50.0  # never starves


# ---------------------------------------------------------------------------- the engine


def test_concurrent_jobs_share_batches_and_get_their_own_results() -> None:
    runner = FakeRunner()
    engine = make(runner, max_items=4)

    async def main():
        jobs = [engine.submit([wave(i)], BEAM1) for i in range(10)]
        return [await j for j in jobs]

    results = run(main())
    engine.stop()
    assert [r[0].text for r in results] == [str(i) for i in range(10)]
    assert [len(b) for b in runner.batches] == [4, 4, 2]


def test_batches_group_similar_lengths_and_never_mix_options() -> None:
    runner = FakeRunner()
    engine = make(runner, max_items=2)

    async def main():
        jobs = [engine.submit([wave(1, 1.0)], BEAM1), engine.submit([wave(2, 10.0)], BEAM1),
                engine.submit([wave(3, 1.1)], BEAM1), engine.submit([wave(4, 9.5)], BEAM1),
                engine.submit([wave(5, 1.0)], BEAM2)]
        return [(await j)[0].text for j in jobs]

    assert run(main()) == ["1", "2", "3", "4", "5"]
    engine.stop()
    assert sorted(map(sorted, runner.batches)) == [[1.0], [1.0, 1.1], [9.5, 10.0]]


def test_a_failing_item_fails_only_its_own_job_and_the_worker_survives() -> None:
    runner = FakeRunner()
    engine = make(runner)

    async def main():
        good = [engine.submit([wave(i)], BEAM1) for i in range(3)]
        bad = engine.submit([wave(-1)], BEAM1)
        texts = [(await j)[0].text for j in good]
        with pytest.raises(RuntimeError, match="poisoned"):
            await bad
        later = await engine.submit([wave(7)], BEAM1)
        return texts, later[0].text

    texts, later = run(main())
    engine.stop()
    assert texts == ["0", "1", "2"] and later == "7"
    assert len(runner.batches[0]) == 4  # the whole batch was tried first, then its items one by one


def test_a_job_of_several_segments_resolves_in_order() -> None:
    engine = make(FakeRunner())

    async def main():
        return [r.text for r in await engine.submit([wave(5), wave(6, 3.0), wave(7)], BEAM1)]

    assert run(main()) == ["5", "6", "7"]
    engine.stop()


def test_each_segment_is_reported_as_soon_as_it_is_decoded() -> None:
    """What the OpenAI route's server-sent events rely on: segment 0 is heard of before the job resolves."""
    steps = threading.Semaphore(0)

    class OneAtATime(FakeRunner):
        def __call__(self, audios, options):
            assert steps.acquire(timeout=5), "the test never released this batch"
            return super().__call__(audios, options)

    engine = make(OneAtATime(), max_items=1, max_wait_s=0.0)

    async def main():
        heard: list[tuple[int, str]] = []
        job = engine.submit([wave(5), wave(6), wave(7)], BEAM1, on_result=lambda i, r: heard.append((i, r.text)))
        steps.release()
        for _ in range(200):
            if heard:
                break
            await asyncio.sleep(0.01)
        first, resolved_early = list(heard), job.future.done()
        steps.release(2)
        results = await job
        return first, resolved_early, heard, [r.text for r in results]

    first, resolved_early, heard, texts = run(main())
    assert first == [(0, "5")] and not resolved_early
    assert heard == [(0, "5"), (1, "6"), (2, "7")] and texts == ["5", "6", "7"]
    engine.stop()


def test_a_full_queue_refuses_instead_of_growing() -> None:
    gate = threading.Event()
    engine = make(FakeRunner(gate), queue_depth=2, max_items=1, max_wait_s=0.0)

    async def main():
        first = engine.submit([wave(1)], BEAM1)
        while engine.depth:  # the worker has taken it and is blocked in the runner
            await asyncio.sleep(0.01)
        queued = [engine.submit([wave(2)], BEAM1), engine.submit([wave(3)], BEAM1)]
        with pytest.raises(QueueFull):
            engine.submit([wave(4)], BEAM1)
        forced = engine.submit([wave(5)], BEAM1, force=True)  # streaming finals are admitted anyway
        gate.set()
        return [(await j)[0].text for j in [first, *queued, forced]]

    assert run(main()) == ["1", "2", "3", "5"]
    engine.stop()


def test_an_empty_queue_admits_a_job_larger_than_the_queue() -> None:
    engine = make(FakeRunner(), queue_depth=2)

    async def main():
        return len(await engine.submit([wave(i) for i in range(5)], BEAM1))

    assert run(main()) == 5
    engine.stop()


def test_cancelled_jobs_leave_the_queue_before_they_run() -> None:
    runner = FakeRunner()
    engine = make(runner, max_wait_s=0.3, max_items=8)

    async def main():
        gone = engine.submit([wave(1), wave(2)], BEAM1)
        kept = engine.submit([wave(3)], BEAM1)
        engine.cancel(gone)
        assert engine.depth == 1
        result = await kept
        assert gone.future.cancelled()
        return result[0].text

    assert run(main()) == "3"
    engine.stop()
    assert runner.batches == [[1.0]]


def test_stop_drains_pending_work_then_refuses_more() -> None:
    engine = make(FakeRunner(), max_wait_s=0.5, max_items=8)

    async def main():
        job = engine.submit([wave(9)], BEAM1)
        stopped = await asyncio.to_thread(engine.stop, 5.0)
        assert stopped
        with pytest.raises(EngineClosed):
            engine.submit([wave(1)], BEAM1)
        return (await job)[0].text

    assert run(main()) == "9"


def test_requests_still_being_decoded_are_waited_for() -> None:
    runner = FakeRunner()
    engine = make(runner, max_wait_s=0.0, max_incoming_wait_s=1.0, max_items=8)

    async def main():
        with engine.incoming():  # a second upload is still being decoded when the first is queued
            first = engine.submit([wave(1)], BEAM1)
            await asyncio.sleep(0.1)
            second = engine.submit([wave(2)], BEAM1)
        return [(await j)[0].text for j in (first, second)]

    assert run(main()) == ["1", "2"]
    engine.stop()
    assert runner.batches == [[1.0, 1.0]]  # one batch, although max_wait is 0


def test_a_lone_segment_at_an_idle_engine_starts_at_once_but_a_busy_engine_gathers_company() -> None:
    """An idle engine does not make a request wait for company that is not coming; one that has just run a batch
    (clients are sending again) waits ``max_wait_s`` as before."""
    runner = FakeRunner()
    engine = make(runner, max_wait_s=1.0, idle_wait_s=0.0, max_items=8)

    async def main():
        await asyncio.sleep(1.1)  # idle for longer than max_wait
        lone = engine.submit([wave(1)], BEAM1)
        await lone
        first = engine.submit([wave(2)], BEAM1)
        await asyncio.sleep(0.1)
        second = engine.submit([wave(3)], BEAM1)
        await first
        await second
        return lone.queue_s, first.queue_s

    lone_wait, busy_wait = run(main())
    engine.stop()
    assert lone_wait < 0.5 and busy_wait >= 0.9
    assert runner.batches == [[1.0], [1.0, 1.0]]
