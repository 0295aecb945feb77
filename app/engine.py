"""The dynamic batching engine: a bounded queue of audio segments and one inference thread that batches them.

Callers on the event loop :meth:`BatchingEngine.submit` segments and await the returned :class:`Job`; the thread
forms batches (see :mod:`app.batching`), runs them through a plain ``runner`` callable and hands each result
back to the loop that asked. The engine knows nothing of HTTP, WebSockets or tensors.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum, IntEnum

import numpy as np

from model.decoding import DecodeOptions
from model.recognizer import TranscriptionResult

from .batching import batch_is_full, select_batch
from .metrics import Metrics

log = logging.getLogger(__name__)

Runner = Callable[[list[np.ndarray], DecodeOptions], list[TranscriptionResult]]
OnResult = Callable[[int, TranscriptionResult], None]


class QueueFull(RuntimeError):
    """The bounded queue has no room: the caller should answer 429 and let the client retry."""


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no new work."""


@dataclass(frozen=True)
class BatchPolicy:
    max_items: int = 16
    max_padded_seconds: float = 160.0
    max_wait_s: float = 0.02  # once a segment waits, how long to wait for company
    max_incoming_wait_s: float = 0.25  # ... for as long as requests are being decoded and will arrive any moment
    # ... when it finds the engine idle (no batch for max_wait_s, no upload being decoded): nobody else is about to
    # send anything, so waiting would only add latency; a few ms still gather a burst that arrives at once
    idle_wait_s: float = 0.002
    queue_depth: int = 128


class Priority(IntEnum):
    """Which pending work the next batch serves first: a stream's final (someone is waiting for the end of what
    they said), then uploads, then partials (best-effort, the first work shed under load)."""

    FINAL = 0
    UPLOAD = 1
    PARTIAL = 2


@dataclass(eq=False)
class QueuedSegment:
    """One waveform to decode; it carries its own state through the queue and the batch."""

    audio: np.ndarray
    options: DecodeOptions
    seconds: float
    job: Job
    index: int
    enqueued: float = field(default_factory=time.monotonic)
    priority: Priority = Priority.UPLOAD


class JobState(Enum):
    PENDING = "pending"
    DONE = "done"  # every segment decoded
    FAILED = "failed"  # a segment raised, or the engine closed
    CANCELLED = "cancelled"  # its client went away


class Job:
    """A caller's segments, resolved on the caller's event loop once every one is decoded (or one fails).

    Passive: the engine records into it (from the inference thread) and cancels it; it never calls back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, request_id: str,
                 on_result: OnResult | None = None) -> None:
        self._loop = loop
        self.request_id = request_id
        self._on_result = on_result  # called on the loop with (index, result) as each segment finishes
        self.future: asyncio.Future[list[TranscriptionResult]] = loop.create_future()
        self._results: list[TranscriptionResult | None] = [None] * count
        self._remaining = count
        self.state = JobState.PENDING
        self.queue_s = 0.0  # longest wait of any of its segments before its batch started
        self.compute_s = 0.0  # model time of the batches that held its segments
        self._batches: set[int] = set()
        self._lock = threading.Lock()

    def __await__(self):
        return self.future.__await__()

    def record(self, seg: QueuedSegment, outcome: TranscriptionResult | BaseException, batch_id: int,
               started: float, compute_s: float) -> None:
        """One segment's outcome (called on the inference thread)."""
        with self._lock:
            self.queue_s = max(self.queue_s, started - seg.enqueued)
            if batch_id not in self._batches:
                self._batches.add(batch_id)
                self.compute_s += compute_s
            if self.state is not JobState.PENDING:
                return
            if isinstance(outcome, BaseException):
                self.state = JobState.FAILED
                self._post(self._fail, outcome)
                return
            self._results[seg.index] = outcome
            self._remaining -= 1
            if self._on_result is not None:
                self._post(lambda r, i=seg.index: self._on_result(i, r), outcome)
            if self._remaining == 0:
                self.state = JobState.DONE
                self._post(self._succeed, list(self._results))

    def close(self, error: BaseException | None) -> None:
        """Resolve now with ``error`` (None: cancelled) unless already resolved."""
        with self._lock:
            if self.state is not JobState.PENDING:
                return
            self.state = JobState.CANCELLED if error is None else JobState.FAILED
        self._post(self._fail, error)

    def _post(self, fn: Callable, arg: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the caller's loop is gone (shutdown): nobody is waiting any more
            pass

    def _succeed(self, results: list[TranscriptionResult]) -> None:
        if not self.future.done():
            self.future.set_result(results)

    def _fail(self, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is None:
            self.future.cancel()
        else:
            self.future.set_exception(error)


class BatchingEngine:
    """Bounded queue + one inference thread; thread-safe ``submit`` from the event loop."""

    def __init__(self, runner: Runner, policy: BatchPolicy, metrics: Metrics | None = None,
                 sample_rate: int = 16000) -> None:
        self._runner, self.policy, self._metrics = runner, policy, metrics
        self._rate = sample_rate
        self._pending: list[QueuedSegment] = []
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._batch_ids = 0
        self._incoming = 0  # requests being decoded from bytes right now, about to submit
        self._last_batch_end = float("-inf")
        self.peak_depth = 0  # the most segments ever pending at once

    # ------------------------------------------------------------------ caller side (event loop)

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, audios: Sequence[np.ndarray], options: DecodeOptions, *, request_id: str = "",
               force: bool = False, reserve: int = 0, on_result: OnResult | None = None,
               priority: Priority = Priority.UPLOAD) -> Job:
        """Queue ``audios`` as one job. Raises :class:`QueueFull` when there is no room, or when it would leave
        fewer than ``reserve`` places free (best-effort work, like streaming partials, gives way first), unless
        ``force`` (the shutdown drain of open streams), and :class:`EngineClosed` during shutdown.
        ``on_result`` hears of each segment as soon as it is decoded, before the job as a whole resolves."""
        job = Job(asyncio.get_running_loop(), len(audios), request_id, on_result)
        if not audios:
            job.state = JobState.DONE
            job.future.set_result([])
            return job
        with self._cv:
            if self._closing:
                raise EngineClosed("the server is shutting down")
            room = self.policy.queue_depth - len(self._pending) - reserve
            # An empty queue admits a job of any size, so one long upload is never refused for ever.
            if not force and self._pending and len(audios) > room:
                raise QueueFull(f"{len(self._pending)} segments are waiting (limit {self.policy.queue_depth})")
            now = time.monotonic()
            for i, audio in enumerate(audios):
                self._pending.append(QueuedSegment(audio, options, len(audio) / self._rate, job, i, now, priority))
            self._pending.sort(key=lambda seg: seg.priority)  # stable: oldest first within a priority
            self._set_depth()
            self._cv.notify()
        return job

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request that will submit shortly (its audio is being decoded).

        Requests that arrive together (say 16 clients whose previous answers came back in one batch) reach
        the queue spread over the time it takes to decode their uploads; without this hint the first few would
        leave in a small batch and the rest in another, batch after batch."""
        with self._cv:
            self._incoming += 1
        try:
            yield
        finally:
            with self._cv:
                self._incoming -= 1
                self._cv.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: drop its segments that have not started, and resolve it as cancelled."""
        if job.state is not JobState.PENDING:
            return
        with self._cv:
            before = len(self._pending)
            self._pending = [s for s in self._pending if s.job is not job]
            dropped = before - len(self._pending)
            self._set_depth()
        if dropped and self._metrics:
            self._metrics.cancelled.inc(dropped)
        job.close(None)

    # ------------------------------------------------------------------ lifecycle

    @property
    def alive(self) -> bool:
        """The inference thread is running (a host's health check)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="asr-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Refuse new work, finish what is queued, stop the thread. False if the queue did not drain in time."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        drained = self._thread is None or not self._thread.is_alive()
        if not drained:
            with self._cv:
                left, self._pending = self._pending, []
                self._set_depth()
            for seg in left:
                seg.job.close(EngineClosed("the server shut down before this audio was decoded"))
        return drained

    # ------------------------------------------------------------------ inference thread

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._execute(batch)
            except BaseException:  # never let the only inference thread die
                log.exception("batch of %d failed outside the model", len(batch))

    def _next_batch(self) -> list[QueuedSegment] | None:
        p = self.policy
        with self._cv:
            while True:
                while not self._pending:
                    if self._closing:
                        return None
                    self._cv.wait()
                first = self._pending[0].enqueued
                idle = first - self._last_batch_end > p.max_wait_s
                while self._pending and not self._closing and not batch_is_full(self._pending, p.max_items,
                                                                                 p.max_padded_seconds):
                    if self._incoming:
                        patience = max(p.max_wait_s, p.max_incoming_wait_s)
                    else:
                        patience = min(p.idle_wait_s, p.max_wait_s) if idle else p.max_wait_s
                    left = first + patience - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                if not self._pending:  # everything was cancelled while we waited
                    continue
                batch = select_batch(self._pending, p.max_items, p.max_padded_seconds)
                chosen = set(map(id, batch))
                self._pending = [s for s in self._pending if id(s) not in chosen]
                self._set_depth()
                log.debug("batch of %d after %.0f ms (%d left, %d incoming)", len(batch),
                          (time.monotonic() - first) * 1000, len(self._pending), self._incoming)
                return batch

    def _execute(self, batch: list[QueuedSegment]) -> None:
        self._batch_ids += 1
        batch_id, started = self._batch_ids, time.monotonic()
        outcomes = self._run(batch)
        self._last_batch_end = time.monotonic()
        compute_s = self._last_batch_end - started
        audio_s = sum(s.seconds for s in batch)
        if self._metrics:
            self._metrics.observe_batch(len(batch), compute_s, audio_s)
            for seg in batch:
                self._metrics.queue_wait.observe(started - seg.enqueued)
        log.debug("batch %d: %d segments, %.2f s audio, %.0f ms, requests %s", batch_id, len(batch), audio_s,
                  compute_s * 1000, sorted({s.job.request_id for s in batch}))
        for seg, outcome in zip(batch, outcomes):
            seg.job.record(seg, outcome, batch_id, started, compute_s)

    def _run(self, batch: list[QueuedSegment]) -> list[TranscriptionResult | BaseException]:
        """Run the batch; if it raises, run each segment alone so only the culprit fails."""
        audios, options = [s.audio for s in batch], batch[0].options
        try:
            results = self._runner(audios, options)
            if len(results) != len(batch):
                raise RuntimeError(f"runner returned {len(results)} results for {len(batch)} segments")
            return list(results)
        except Exception as batch_error:  # noqa: BLE001 - any model failure: isolate it, below
            if len(batch) == 1:
                log.warning("segment of request %s failed: %r", batch[0].job.request_id, batch_error)
                self._count_failures(1)
                return [batch_error]
            log.warning("batch of %d failed (%r); retrying its segments one by one", len(batch), batch_error)
        outcomes: list[TranscriptionResult | BaseException] = []
        for seg in batch:
            try:
                outcomes.append(self._runner([seg.audio], options)[0])
            except Exception as error:  # noqa: BLE001 - becomes this segment's outcome
                log.warning("segment of request %s failed: %r", seg.job.request_id, error)
                self._count_failures(1)
                outcomes.append(error)
        return outcomes

    def _count_failures(self, n: int) -> None:
        if self._metrics:
            self._metrics.item_failures.inc(n)

    def _set_depth(self) -> None:
        self.peak_depth = max(self.peak_depth, len(self._pending))
        if self._metrics:
            self._metrics.queue_depth.set(len(self._pending))
            self._metrics.queue_depth_peak.set(self.peak_depth)
