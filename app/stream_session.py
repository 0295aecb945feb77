"""One live streaming session: PCM bytes in, ordered partial/final transcript messages out.

The session knows nothing of WebSockets (the route pumps bytes in and messages out) and nothing of the model:
partial and final decodes are submitted to the shared :class:`~app.engine.BatchingEngine`, so live sessions
and uploads share batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from enum import Enum

import numpy as np

from model.decoding import DecodeOptions
from model.resample import StreamResampler

from .endpointer import EndpointConfig, Endpointer
from .engine import BatchingEngine, EngineClosed, Job, Priority, QueueFull
from .pcm import PcmDecoder, PcmError
from .vad import FRAME, FRAME_S, SpeechDetector

QUEUE_POLL_S = 0.05
SLICE_S = 0.25  # source audio consumed between two turns of the event loop


class StreamError(Exception):
    """Ends the session: the route sends ``{"type": "error"}`` then closes with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class StreamOptions:
    """What the client's optional ``config`` message sets."""

    sample_rate: int | None = None  # of the client's frames; None: the server's own rate
    encoding: str = "pcm_s16le"
    beam_size: int = 5
    word_timestamps: bool = False  # finals carry their words with times


@dataclass(frozen=True)
class StreamLimits:
    """What the server's settings fix for every session."""

    max_frame_bytes: int = 1024 * 1024
    max_seconds: float = 3600.0
    partial_interval_s: float = 0.25
    endpoint_silence_s: float = 0.5
    partial_beam_size: int = 1
    partials_from_ctc: bool = True  # partials from the CTC head's best path, not a decoder search
    sample_rate: int = 16000  # what the model decodes (and the VAD scores) at
    max_segment_s: float = 20.0
    max_pending_finals: int = 2  # beyond this many undecoded finals the session stops taking audio
    queue_wait_s: float = 10.0  # how long a final waits for room in a full queue before 1013


class AudioTape:
    """The session's 16 kHz audio from ``base`` on; it forgets what no future segment can reach."""

    def __init__(self) -> None:
        self._data = np.zeros(FRAME * 128, np.float32)
        self._len = 0
        self.base = 0

    @property
    def end(self) -> int:
        return self.base + self._len

    def append(self, x: np.ndarray) -> None:
        if self._len + len(x) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), self._len + len(x)), np.float32)
            grown[: self._len] = self._data[: self._len]
            self._data = grown
        self._data[self._len: self._len + len(x)] = x
        self._len += len(x)

    def slice(self, start: int, stop: int) -> np.ndarray:
        lo, hi = max(start, self.base) - self.base, min(stop, self.end) - self.base
        return self._data[lo:hi].copy()

    def forget_before(self, sample: int) -> None:
        drop = min(max(0, sample - self.base), self._len)
        if drop:
            self._data[: self._len - drop] = self._data[drop: self._len]
            self._len -= drop
            self.base += drop


class Kind(str, Enum):
    """The two kinds of transcript message; the value is the message's ``type``."""

    PARTIAL = "partial"
    FINAL = "final"


@dataclass
class _Pending:
    kind: Kind
    segment: int
    start: float
    end: float
    job: Job


class StreamSession:
    def __init__(self, engine: BatchingEngine, detector: SpeechDetector, limits: StreamLimits,
                 decoding: DecodeOptions, request_id: str = "",
                 on_partial_dropped: Callable[[], None] = lambda: None) -> None:
        """``decoding`` holds the server's decode settings; partials vary its beam size or take the CTC head's
        best path. ``on_partial_dropped`` counts partials shed under load or overtaken by their final."""
        self._engine, self._detector, self.limits = engine, detector, limits
        self._partial_dropped = on_partial_dropped
        self.request_id = request_id
        self._decoding = decoding
        self.options = StreamOptions(beam_size=decoding.beam_size)
        self.started = False  # audio has arrived: the config is fixed
        self.finished = False
        self.draining = False  # the server ended the session (shutdown), not the client
        self.audio_seconds = 0.0
        self.held_s = 0.0  # time the session spent waiting for its finals (the client is not to blame for it)
        self._lock = asyncio.Lock()  # one feed or finish at a time: they share the resampler, VAD and tape
        self._finals: list[Job] = []
        self._drain: asyncio.Future | None = None
        self._outbox: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._jobs: list[Job] = []
        self._segment = 0
        self._partial: Job | None = None
        # A final decoded ahead of its endpoint: the segment range it assumes, and its job (not yet announced).
        self._speculation: tuple[tuple[int, int], Job] | None = None
        self._partial_mark = 0  # sample where the last partial of the open segment ended
        endpoint_frames = max(1, round(limits.endpoint_silence_s / FRAME_S))
        self._endpoint_cfg = EndpointConfig(threshold=detector.threshold, neg_threshold=detector.neg_threshold,
                                            endpoint_frames=endpoint_frames,
                                            max_frames=int(limits.max_segment_s / FRAME_S))
        self._setup()

    @property
    def rate(self) -> int:
        """The sample rate the session decodes at (whatever rate the client sends)."""
        return self.limits.sample_rate

    @property
    def source_rate(self) -> int:
        """The sample rate of the client's frames."""
        return self.options.sample_rate or self.rate

    def _setup(self) -> None:
        self._pcm = PcmDecoder(self.options.encoding)
        self._resampler = StreamResampler(self.source_rate, self.rate)
        self._vad = self._detector.stream()
        self._endpoints = Endpointer(self._endpoint_cfg)
        self._tape = AudioTape()

    # ------------------------------------------------------------------ input

    def configure(self, options: StreamOptions) -> None:
        if self.started:
            raise StreamError(1008, "config must come before the first audio frame")
        self.options = options
        self._setup()

    async def feed(self, data: bytes) -> None:
        """Take one binary frame. Returns once its audio is consumed; while this session's finals are backed
        up it waits, so the caller stops reading the socket and a client that outruns the model is slowed."""
        if self.draining:
            return  # frames the client sent before it learned of the shutdown: too late to decode
        if self.finished:
            raise StreamError(1008, "audio after eof")
        if len(data) > self.limits.max_frame_bytes:
            raise StreamError(1009, f"frame of {len(data)} bytes is over the {self.limits.max_frame_bytes}-byte limit")
        self.started = True
        try:
            samples = self._pcm.decode(data)
        except PcmError as e:
            raise StreamError(1007, str(e)) from e
        self.audio_seconds += len(samples) / self.source_rate
        if self.audio_seconds > self.limits.max_seconds:
            raise StreamError(1008, f"the session is over its {self.limits.max_seconds:g} s audio limit")
        step = max(1, int(SLICE_S * self.source_rate))
        async with self._lock:
            for i in range(0, len(samples), step):
                if self.finished:
                    return
                audio = self._resampler.push(samples[i: i + step])
                for start, end in self._consume(audio, self._vad.push(audio)):
                    await self._queue_final(start, end)
                self._forget()
                self._speculate()
                self._maybe_partial()
                await asyncio.sleep(0)  # a large frame is consumed in slices, so other connections get turns

    async def finish(self, force: bool = False) -> None:
        """The client sent eof: close the last segment; :meth:`messages` ends after its final."""
        if self.finished:
            return
        self.finished = True
        async with self._lock:
            audio = self._resampler.flush()
            closed = self._consume(audio, np.concatenate([self._vad.push(audio), self._vad.flush()]))
            last = self._endpoints.finish()
            for start, end in closed + ([last] if last is not None else []):
                await self._queue_final(start, end, force=force)
            self._outbox.put_nowait(None)

    def drain(self) -> None:
        """The server is shutting down: decode what has arrived as if the client had sent eof."""
        if not self.finished:
            self.draining = True
            self._drain = asyncio.ensure_future(self.finish(force=True))

    def abort(self) -> None:
        """The client is gone: drop every decode that has not run yet."""
        self.finished = True
        for job in self._jobs:
            self._engine.cancel(job)
        self._outbox.put_nowait(None)

    def _consume(self, audio: np.ndarray, probs: np.ndarray) -> list[tuple[int, int]]:
        """Keep the audio and advance the endpointer; returns the segments (in VAD frames) that closed."""
        self._tape.append(audio)
        return self._endpoints.update(probs)

    def _forget(self) -> None:
        """Drop the audio no future segment can reach (call once the closed segments are queued)."""
        open_start = self._endpoints.start
        reach = self._endpoints.frames - self._endpoint_cfg.pad_frames
        self._tape.forget_before(FRAME * (open_start if open_start is not None else max(0, reach)))

    # ------------------------------------------------------------------ decoding

    def _decode(self, start: int, end: int, options: DecodeOptions, priority: Priority, force: bool = False,
                reserve: int = 0) -> Job:
        try:
            job = self._engine.submit([self._tape.slice(start, end)], options, force=force, reserve=reserve,
                                      request_id=self.request_id, priority=priority)
        except EngineClosed as e:
            raise StreamError(1001, str(e)) from e
        self._jobs = [j for j in self._jobs if not j.future.done()] + [job]
        return job

    def _announce(self, kind: Kind, start: int, end: int, job: Job) -> None:
        """The message ``job`` will become, in its place in the session's output order."""
        self._outbox.put_nowait(_Pending(kind, self._segment, start / self.rate, end / self.rate, job))

    def _final_options(self) -> DecodeOptions:
        return replace(self._decoding, beam_size=self.options.beam_size)

    def _speculate(self) -> None:
        """Decode the open segment's final once its endpoint is likely (`Endpointer.likely_close`), so it is
        ready when the endpoint comes; drop it when speech resumes. Best-effort, like a partial."""
        likely = self._endpoints.likely_close()
        if self._speculation is not None and self._speculation[0] != likely:
            self._engine.cancel(self._speculation[1])
            self._speculation = None
        if likely is None or self._speculation is not None:
            return
        try:
            job = self._decode(likely[0] * FRAME, likely[1] * FRAME, self._final_options(), Priority.FINAL,
                               reserve=self._engine.policy.queue_depth // 2)
        except QueueFull:
            return
        self._speculation = (likely, job)

    def _take_speculation(self, segment: tuple[int, int]) -> Job | None:
        """The speculative decode of ``segment``, if one was started for exactly that range."""
        speculation, self._speculation = self._speculation, None
        if speculation is None:
            return None
        if speculation[0] == segment and not speculation[1].future.cancelled():
            return speculation[1]
        self._engine.cancel(speculation[1])
        return None

    async def _queue_final(self, start_frame: int, end_frame: int, force: bool = False) -> None:
        """Queue a closed segment's final, after waiting for room among this session's own finals. Finals count
        against the server's queue like uploads do: a final waits up to ``queue_wait_s`` for room, then the
        session ends with 1013 (retry later). Only the shutdown drain forces them in."""
        while len(pending := [j for j in self._finals if not j.future.done()]) >= self.limits.max_pending_finals:
            waited = time.monotonic()
            await asyncio.wait([pending[0].future])
            self.held_s += time.monotonic() - waited
        if self._partial is not None and not self._partial.future.done():
            self._engine.cancel(self._partial)  # overtaken: the final says more, and says it now
            self._partial_dropped()
        waited = time.monotonic()
        job = self._take_speculation((start_frame, end_frame))
        while job is None:
            try:
                job = self._decode(start_frame * FRAME, end_frame * FRAME, self._final_options(), Priority.FINAL,
                                   force=force)
            except QueueFull as e:  # wait for room (not reading the client meanwhile), then give up
                if time.monotonic() - waited > self.limits.queue_wait_s:
                    raise StreamError(1013, f"the server is busy ({e}); retry shortly") from e
                await asyncio.sleep(QUEUE_POLL_S)
        self.held_s += time.monotonic() - waited
        self._announce(Kind.FINAL, start_frame * FRAME, end_frame * FRAME, job)
        self._finals = [*pending, job]
        self._segment += 1
        self._partial_mark = 0

    def _maybe_partial(self) -> None:
        if self._endpoints.start is None or (self._partial is not None and not self._partial.future.done()):
            return
        start, now = self._endpoints.start * FRAME, self._endpoints.frames * FRAME
        mark = max(self._partial_mark, start)
        if now - mark < self.limits.partial_interval_s * self.rate:
            return
        options = replace(self._decoding, beam_size=self.limits.partial_beam_size,
                          ctc_greedy=self.limits.partials_from_ctc)
        try:  # partials are shed first: they may only use the lower half of the queue
            self._partial = self._decode(start, now, options, Priority.PARTIAL,
                                         reserve=self._engine.policy.queue_depth // 2)
        except QueueFull:
            self._partial_dropped()
            return  # partials are best-effort: the next chunk tries again
        self._announce(Kind.PARTIAL, start, now, self._partial)
        self._partial_mark = now

    # ------------------------------------------------------------------ output

    async def messages(self) -> AsyncIterator[dict]:
        """Protocol messages in order: partials as their decodes finish, finals in segment order."""
        while (item := await self._outbox.get()) is not None:
            await asyncio.wait([item.job.future])
            if item.job.future.cancelled():
                continue
            if item.job.future.exception() is not None:
                if item.kind is Kind.PARTIAL:
                    continue
                raise StreamError(1011, f"decoding segment {item.segment} failed")
            result = item.job.future.result()[0]
            if item.kind is Kind.PARTIAL:
                yield {"type": Kind.PARTIAL.value, "segment": item.segment, "text": result.text, "start": round(item.start, 3)}
                continue
            final = {"type": Kind.FINAL.value, "segment": item.segment, "text": result.text, "start": round(item.start, 3),
                     "end": round(item.end, 3)}
            if self.options.word_timestamps:
                final["words"] = [asdict(w.shifted(item.start)) for w in result.words]
            yield final
