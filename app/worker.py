"""The model worker: the server's one holder of the recognizer (and through it, of tensors). Every torch call on
the model runs on the worker's own thread; the engine's inference thread hands it each batch. (``speech-transformer
transcribe`` runs a recognizer of its own, with no server.)

Why one thread: OpenMP keeps a team of worker threads for each thread that runs parallel torch ops, and libgomp
stops spinning and sleeps between ops once the teams together hold more threads than there are cores. The
decoder's many small ops then pay a wake-up each: on 2 cores a 5 s clip took 2x as long on a second team as on
the only one. So the model's team is the only one: loading, warm-up and decoding share this thread, and every
other thread (decoding uploads, resampling streams) is held to one intra-op thread, which needs no team.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from model.decoding import DecodeOptions
from model.recognizer import Recognizer, TranscriptionResult

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, read before anything narrows it


def one_intra_op_thread() -> None:
    """For every thread but the model's (and the default for threads that start later): no OpenMP team."""
    torch.set_num_threads(1)


class ModelWorker:
    """A loaded recognizer on its own thread; :meth:`run` is the engine's runner."""

    def __init__(self, recognizer: Recognizer, thread: ThreadPoolExecutor) -> None:
        self.recognizer, self._thread = recognizer, thread

    @classmethod
    def load(cls, weights: Path, device: str = "auto", dtype: str = "auto",
             threads: int | None = None) -> ModelWorker:
        thread = ThreadPoolExecutor(1, thread_name_prefix="asr-model", initializer=torch.set_num_threads,
                                    initargs=(threads or DEFAULT_THREADS,))
        started = time.perf_counter()
        recognizer = thread.submit(Recognizer.load, weights, device=device, dtype=dtype).result()
        log.info("loaded %s from %s on %s (%s) in %.1f s, %d intra-op threads; word LM: %s", recognizer.name,
                 weights, recognizer.device, recognizer.precision, time.perf_counter() - started,
                 threads or DEFAULT_THREADS, recognizer.lm.path if recognizer.lm else "none")
        return cls(recognizer, thread)

    def _on_model_thread(self, fn: Callable[..., T], *args: object) -> T:
        return self._thread.submit(fn, *args).result()

    def close(self) -> None:
        self._thread.shutdown(wait=False)

    @property
    def name(self) -> str:
        return self.recognizer.name

    @property
    def sample_rate(self) -> int:
        return self.recognizer.sample_rate

    @property
    def max_segment_seconds(self) -> float:
        return self.recognizer.max_segment_seconds

    def run(self, audios: list[np.ndarray], options: DecodeOptions) -> list[TranscriptionResult]:
        return self._on_model_thread(self.recognizer.transcribe, audios, options)

    def warm_up(self, options: DecodeOptions) -> float:
        """Decode one small batch so the first real request pays no lazy-initialisation cost; returns seconds."""
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        clips = [(0.01 * rng.standard_normal(int(self.sample_rate * s))).astype(np.float32) for s in (1.0, 0.5)]
        for beam in sorted({1, options.beam_size}):  # streaming partials decode with beam 1
            self.run(clips, replace(options, beam_size=beam))
        elapsed = time.perf_counter() - started
        log.info("warm-up batch done in %.1f s", elapsed)
        return elapsed
