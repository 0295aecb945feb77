"""An upload's way through the service: bytes -> 16 kHz mono -> speech segments -> engine -> one transcript.

Shared by the native and the OpenAI-compatible routes; it raises :class:`~app.errors.ApiError` for anything
the client can fix and never formats a response itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

import numpy as np

from model.alignment import WordTiming
from model.audio import AudioError, AudioTooLong
from model.decoding import DecodeOptions
from model.recognizer import NBest, TranscriptionResult

from .engine import BatchingEngine, EngineClosed, Job, OnResult, QueueFull
from .errors import ApiError
from .segmenter import decode_and_plan, join_texts
from .vad import SpeechDetector
from .worker import one_intra_op_thread


@dataclass(frozen=True)
class SegmentText:
    start: float
    end: float
    text: str
    score: float
    n_best: tuple[NBest, ...]
    words: tuple[WordTiming, ...] = ()  # times from the start of the upload


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: list[SegmentText]
    duration: float
    queue_ms: float
    compute_ms: float
    preprocess_ms: float


class TranscriptionService:
    def __init__(self, engine: BatchingEngine, detector: SpeechDetector, *, sample_rate: int,
                 max_segment_s: float, max_audio_s: float, retry_after_s: int, max_decodes: int = 2,
                 decode_wait_s: float = 10.0) -> None:
        self._engine, self._detector = engine, detector
        self.rate, self.max_segment_s, self.max_audio_s = sample_rate, max_segment_s, max_audio_s
        self.retry_after_s = retry_after_s
        # Each decode holds up to max_audio_s of audio and a core: bound how many run at once. A slot is freed
        # when its thread ends, not when its client leaves, so an abandoned decode still counts.
        self._decodes = asyncio.Semaphore(max_decodes)
        self._decoder = ThreadPoolExecutor(max_decodes, thread_name_prefix="asr-decode",
                                           initializer=one_intra_op_thread)
        self._decode_wait_s = decode_wait_s

    def check_capacity(self) -> None:
        """Refuse before the upload is even read when the queue is already full (saves the client the upload)."""
        if self._engine.depth >= self._engine.policy.queue_depth:
            raise self._busy(f"{self._engine.depth} segments are waiting")

    def _busy(self, why: object) -> ApiError:
        return ApiError(429, f"the server is busy ({why}); retry shortly", {"Retry-After": str(self.retry_after_s)})

    def _prepare(self, data: bytes) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Runs on a helper thread: decoding and VAD are CPU work that must stay off the event loop."""
        try:
            return decode_and_plan(data, self._detector, self.rate, self.max_segment_s, self.max_audio_s)
        except AudioTooLong as e:
            raise ApiError(413, str(e)) from e
        except AudioError as e:  # libsndfile names the in-memory file object; the client needs only the reason
            raise ApiError(400, re.sub(r"Error opening <[^>]*>: ", "", str(e))) from e

    async def _prepare_bounded(self, data: bytes) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """:meth:`_prepare` on a helper thread, at most ``max_decodes`` at a time; 429 after waiting too long."""
        try:
            await asyncio.wait_for(self._decodes.acquire(), self._decode_wait_s)
        except TimeoutError:
            raise self._busy("every decoding slot is taken") from None
        loop = asyncio.get_running_loop()
        work = self._decoder.submit(contextvars.copy_context().run, self._prepare, data)
        work.add_done_callback(lambda _: _call_soon(loop, self._decodes.release))
        return await asyncio.wrap_future(work)

    async def _submit(self, data: bytes, options: DecodeOptions, request_id: str,
                      on_result: OnResult | None = None) -> tuple[Job | None, list[tuple[int, int]], float, float]:
        """Decode, cut and queue an upload: ``(job, spans, duration, preprocess_ms)``; no job when it holds no speech."""
        started = time.perf_counter()
        with self._engine.incoming():
            audio, spans = await self._prepare_bounded(data)
            preprocess_ms = (time.perf_counter() - started) * 1000
            duration = len(audio) / self.rate
            if not spans:
                return None, [], duration, preprocess_ms
            try:
                job = self._engine.submit([audio[a:b] for a, b in spans], options, request_id=request_id,
                                          on_result=on_result)
            except QueueFull as e:
                raise self._busy(e) from e
            except EngineClosed as e:
                raise ApiError(503, str(e), {"Retry-After": str(self.retry_after_s)}) from e
        return job, spans, duration, preprocess_ms

    def _segment(self, span: tuple[int, int], result: TranscriptionResult) -> SegmentText:
        start = span[0] / self.rate
        return SegmentText(round(start, 3), round(span[1] / self.rate, 3), result.text, result.score, result.n_best,
                           tuple(w.shifted(start) for w in result.words))

    async def transcribe(self, data: bytes, options: DecodeOptions, *, request_id: str = "",
                         disconnected: Callable[[], Awaitable[object]] | None = None) -> Transcript:
        """``disconnected`` makes an awaitable that returns when the client goes away."""
        job, spans, duration, preprocess_ms = await self._submit(data, options, request_id)
        if job is None:
            return Transcript("", [], duration, 0.0, 0.0, preprocess_ms)
        results = await _unless_gone(self._engine, job, disconnected)
        segments = [self._segment(span, r) for span, r in zip(spans, results)]
        text = join_texts(s.text for s in segments)
        return Transcript(text, segments, duration, job.queue_s * 1000, job.compute_s * 1000, preprocess_ms)

    async def stream(self, data: bytes, options: DecodeOptions, *,
                     request_id: str = "") -> AsyncIterator[SegmentText]:
        """The upload's segments in order, each as soon as it and those before it are decoded.

        Everything the client can get wrong (bad audio, too long, busy) raises here, before any of the answer is
        sent; a failure while decoding raises from the iterator. Closing the iterator early (the client left)
        withdraws the segments not yet decoded."""
        decoded: defaultdict[int, asyncio.Future[TranscriptionResult]] = defaultdict(
            asyncio.get_running_loop().create_future)
        job, spans, _, _ = await self._submit(data, options, request_id,
                                              on_result=lambda i, r: decoded[i].set_result(r))
        return self._in_order(job, spans, decoded)

    async def _in_order(self, job: Job | None, spans: list[tuple[int, int]],
                        decoded: defaultdict[int, asyncio.Future[TranscriptionResult]]) -> AsyncIterator[SegmentText]:
        if job is None:
            return
        try:
            for i, span in enumerate(spans):
                await asyncio.wait([decoded[i], job.future], return_when=asyncio.FIRST_COMPLETED)
                if not decoded[i].done():  # the job failed or was cancelled first (success reports every segment)
                    await _result(job)
                    raise ApiError(500, "the model lost a segment of this audio")
                yield self._segment(span, decoded[i].result())
        finally:
            if not job.future.done():
                self._engine.cancel(job)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    with suppress(RuntimeError):  # the loop is closed (shutdown): nobody waits for the slot any more
        loop.call_soon_threadsafe(fn)


async def _unless_gone(engine: BatchingEngine, job: Job, disconnected: Callable[[], Awaitable[object]] | None):
    """Wait for the job; if the client disconnects first, withdraw its pending segments from the queue."""
    if disconnected is None:
        return await _result(job)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait([job.future, watcher], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not job.future.done():
        engine.cancel(job)
        raise ApiError(499, "client disconnected")
    return await _result(job)


async def _result(job: Job) -> list[TranscriptionResult]:
    await asyncio.wait([job.future])
    if job.future.cancelled():
        raise ApiError(499, "request cancelled")
    error = job.future.exception()
    if isinstance(error, EngineClosed):
        raise ApiError(503, str(error))
    if error is not None:
        raise ApiError(500, f"the model failed on this audio: {type(error).__name__}")
    return job.future.result()
