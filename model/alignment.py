"""Word timings from the CTC head: the decoded tokens are force-aligned to the encoder frames.

The attention decoder says *what* was said but not *when*; the CTC head's frame posteriors do. Viterbi
alignment of the chosen hypothesis (torchaudio's ``forced_align``) puts every token on a run of frames, and a
word spans its tokens' runs. CTC posteriors are peaky, so a word's start is the reliable edge (within a frame
or two, 40-80 ms); its end marks its last token's spike and may fall short of the spoken end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchaudio.functional as taf

from .config import FeatureConfig
from .tokenizer import Tokenizer


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float  # seconds from the start of the waveform
    end: float

    def shifted(self, offset: float) -> WordTiming:
        """The same word timed from ``offset`` seconds earlier (a segment's start within its upload)."""
        return WordTiming(self.word, round(offset + self.start, 3), round(offset + self.end, 3))


@dataclass(frozen=True)
class FrameClock:
    """Seconds at the edges of encoder frames: frame ``i`` is centred on its receptive field."""

    frame_s: float
    offset_s: float

    @classmethod
    def for_features(cls, cfg: FeatureConfig, subsampling_rate: int, receptive_field: int) -> FrameClock:
        """The clock of a front-end that takes ``subsampling_rate`` filterbank frames per encoder frame and sees
        ``receptive_field`` of them (the model's :meth:`~model.transformer.SpeechTransformer.subsampling_rate` and
        :meth:`~model.transformer.SpeechTransformer.receptive_field`)."""
        hop_s, win_s = cfg.hop_length / cfg.sample_rate, cfg.frame_samples / cfg.sample_rate
        first_start = -win_s / 2 if cfg.centred else 0.0  # where filterbank frame 0 begins
        frame_s = subsampling_rate * hop_s
        centre = first_start + ((receptive_field - 1) * hop_s + win_s) / 2
        return cls(frame_s, centre - frame_s / 2)

    def at(self, frame: int) -> float:
        return max(0.0, self.offset_s + frame * self.frame_s)


def align_words(ctc_logprobs: torch.Tensor, tokens: Sequence[int], tokenizer: Tokenizer, clock: FrameClock,
                blank: int, duration: float) -> tuple[WordTiming, ...]:
    """Words of ``tokens`` with their times, given ``(T, V)`` CTC log-probabilities of one utterance.

    Returns ``()`` when there is nothing to align or the frames cannot hold the tokens (CTC needs a frame per
    token plus one between repeats), rather than inventing times."""
    ids = [t for t in tokens if tokenizer.is_text(t)]
    if not ids:
        return ()
    target = torch.tensor([ids], dtype=torch.int32, device=ctc_logprobs.device)
    try:
        path, scores = taf.forced_align(ctc_logprobs[None].float(), target, blank=blank)
    except RuntimeError:  # fewer frames than the hypothesis needs
        return ()
    spans = taf.merge_tokens(path[0].cpu(), scores[0].exp().cpu(), blank=blank)
    if len(spans) != len(ids):
        return ()
    groups: list[list[tuple[int, int, int]]] = []  # per word: (token, first frame, end frame) of each token
    for token, span in zip(ids, spans):
        if not groups or tokenizer.starts_word(token):
            groups.append([])
        groups[-1].append((token, span.start, span.end))
    timed = []
    for group in groups:
        text = tokenizer.decode([token for token, _, _ in group])
        if text:
            timed.append(WordTiming(text, round(min(clock.at(group[0][1]), duration), 3),
                                    round(min(clock.at(group[-1][2]), duration), 3)))
    return tuple(timed)
