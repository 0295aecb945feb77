"""The model worker: the server's one holder of the recognizer (and through it, of tensors); the engine's
inference thread is its only caller. (``speech-transformer transcribe`` runs a recognizer of its own, with no
server.)"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from model.decoding import DecodeOptions
from model.recognizer import Recognizer, TranscriptionResult

log = logging.getLogger(__name__)


class ModelWorker:
    """A loaded recognizer; :meth:`run` is the engine's runner and is only ever called from one thread."""

    def __init__(self, recognizer: Recognizer) -> None:
        self.recognizer = recognizer

    @classmethod
    def load(cls, weights: Path, device: str = "auto", dtype: str = "auto",
             threads: int | None = None) -> ModelWorker:
        if threads:  # on a shared CPU one intra-op thread often beats several that spin against each other
            torch.set_num_threads(threads)
        started = time.perf_counter()
        recognizer = Recognizer.load(weights, device=device, dtype=dtype)
        log.info("loaded %s from %s on %s (%s) in %.1f s; word LM: %s", recognizer.name, weights, recognizer.device,
                 recognizer.precision, time.perf_counter() - started,
                 recognizer.lm.path if recognizer.lm else "none")
        return cls(recognizer)

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
        return self.recognizer.transcribe(audios, options)

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
