"""Voice activity detection with Silero VAD: the model file its PyPI package bundles, run by onnxruntime.

We use the package's *sequence* export, which scores a whole block of 32 ms frames in one ONNX call (the
stock export needs one Python call per frame), and carry its LSTM state ourselves so that the same code
serves whole uploads and live streams. It costs about 4 ms per second of audio on one busy CPU core.
"""

from __future__ import annotations

import importlib.resources
import math

import numpy as np
import onnxruntime as ort
import torch

_threads = torch.get_num_threads()
import silero_vad

torch.set_num_threads(_threads)

RATE = 16000
FRAME = 512  # samples per frame at 16 kHz (32 ms): what the model was trained on
CONTEXT = 64  # each frame is scored with the previous frame's last 64 samples in front of it
FRAME_S = FRAME / RATE
MAX_FRAMES_PER_CALL = 512
MODEL_FILE = "silero_vad_16k_sequence.onnx"


class SpeechDetector:
    """One ONNX session shared by every caller (onnxruntime's ``run`` is thread-safe; the state is ours)."""

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError("the VAD threshold must be in (0, 1)")
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)  # hysteresis, as Silero's own segmenter does
        options = ort.SessionOptions()
        options.inter_op_num_threads = options.intra_op_num_threads = 1
        path = importlib.resources.files(silero_vad.__name__).joinpath("data", MODEL_FILE)
        with importlib.resources.as_file(path) as file:
            self._session = ort.InferenceSession(str(file), sess_options=options, providers=["CPUExecutionProvider"])

    def stream(self) -> VadStream:
        return VadStream(self)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability of every 32 ms frame of a whole clip (the last frame zero-padded)."""
        stream = self.stream()
        return np.concatenate([stream.push(audio), stream.flush()])

    def speech_regions(self, audio: np.ndarray, *, min_silence_ms: int = 300, pad_ms: int = 150,
                       min_speech_ms: int = 250, max_region_s: float = math.inf) -> list[tuple[int, int]]:
        """``(start, end)`` sample ranges of speech; regions longer than ``max_region_s`` are cut at their
        longest pause (Silero's own segmenter does the bookkeeping)."""
        probs = self.probabilities(audio)
        regions = silero_vad.get_speech_timestamps_from_probs(
            probs.tolist(), sampling_rate=RATE, threshold=self.threshold, neg_threshold=self.neg_threshold,
            min_speech_duration_ms=min_speech_ms, min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms,
            max_speech_duration_s=max_region_s, audio_length_samples=len(audio),
        )
        return [(int(r["start"]), int(r["end"])) for r in regions]

    def _score(self, frames: np.ndarray, state: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple]:
        probs, h, c = self._session.run(["speech_probs", "hn", "cn"], {"input": frames, "h": state[0], "c": state[1]})
        return np.asarray(probs, dtype=np.float32).reshape(-1), (h, c)


class VadStream:
    """Incremental scoring: feed audio of any length, get the probabilities of the frames it completed."""

    def __init__(self, detector: SpeechDetector) -> None:
        self._detector = detector
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self._context = np.zeros(CONTEXT, np.float32)
        self._tail = np.zeros(0, np.float32)  # samples of a frame not yet complete
        self.frames = 0  # frames scored so far

    def push(self, audio: np.ndarray) -> np.ndarray:
        samples = np.concatenate([self._tail, np.asarray(audio, np.float32).reshape(-1)])
        whole = len(samples) // FRAME
        self._tail = samples[whole * FRAME:]
        if whole == 0:
            return np.zeros(0, np.float32)
        return self._score(samples[: whole * FRAME].reshape(whole, FRAME))

    def flush(self) -> np.ndarray:
        """Score the incomplete last frame, zero-padded (end of input)."""
        if len(self._tail) == 0:
            return np.zeros(0, np.float32)
        frame = np.zeros((1, FRAME), np.float32)
        frame[0, : len(self._tail)] = self._tail
        self._tail = np.zeros(0, np.float32)
        return self._score(frame)

    def _score(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for first in range(0, len(frames), MAX_FRAMES_PER_CALL):
            block = frames[first: first + MAX_FRAMES_PER_CALL]
            contexts = np.concatenate([self._context[None], block[:-1, -CONTEXT:]])
            self._context = block[-1, -CONTEXT:].copy()
            probs, self._state = self._detector._score(np.concatenate([contexts, block], axis=1), self._state)
            out.append(probs)
        self.frames += len(frames)
        return np.concatenate(out)
