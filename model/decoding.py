"""Batched beam search over the attention decoder, joined by the CTC prefix scorer and word-LM fusion.

B utterances x K beams run as one ``(B*K)``-row batch per step. Every source of scores is a
:class:`~model.scorer.Scorer` over those rows: the attention decoder with its KV cache
(:mod:`model.decoder_scorer`), the CTC prefix scorer (:mod:`model.ctc_prefix`) and word-LM fusion
(:mod:`model.lm_fusion`). Each step the decoder proposes, the length rules filter its proposals, the other scorers
score the decoder's best few tokens per beam, and the search keeps the weighted best. Its other jobs are named
helpers: finishing hypotheses, pruning to K and then to the beams within ``beam_margin`` of their utterance's best,
and letting an utterance leave the batch once K of its hypotheses have finished or its live ones trail its best
finished one by ``end_margin``, so each step's compute tracks the hypotheses that can still win.
:mod:`model.ranking` orders what finished.

With a CTC head the search is joint by default: the CTC prefix probability keeps hypotheses aligned with the audio
(no dropped or looped words). ``ctc_mode="rescore"`` instead only re-ranks the finished n-best with the
whole-sequence CTC likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .ctc_prefix import CTCPrefixScorer
from .decoder_scorer import DecoderScorer
from .lm_fusion import WordLMFusion
from .ranking import Finished, Hypothesis, rank
from .scorer import Scorer
from .transformer import SpeechTransformer

__all__ = ["DecodeOptions", "Hypothesis", "beam_search"]


@dataclass(frozen=True)
class DecodeOptions:
    # 16: the word LM re-ranks what the beam finishes, and more hypotheses give it the right spelling more often
    # (10 against 5: weights/README.md, *Stage 13*; 16 against 10 on the held-out voice: *Stage 16*); ~1.25x the
    # decoding time of 10 one clip at a time, ~0.7x the server's throughput under load
    beam_size: int = 16
    n_best: int = 1
    length_penalty: float = 1.0  # rank by score / len ** length_penalty (0 = raw log-probability)
    max_len_ratio: float = 1.0  # at most this many output tokens per encoder frame (40 ms)
    min_len: int = 0  # the end token is not allowed before this many tokens
    ctc_weight: float = 0.1  # weight of the CTC head's log-likelihood in the joint score (0 = attention only)
    # "prefix": CTC prefix scores join every beam step (Watanabe et al. 2017); "rescore": CTC only re-ranks the
    # finished n-best (cheaper, weaker).
    ctc_mode: str = "prefix"
    ctc_prebeam: int = 0  # prefix mode: the decoder's top tokens per beam that CTC scores (0 = 1.5 x beam_size)
    # weight of a word language model's log-probability when the recognizer re-ranks the finished beam (used only
    # when the checkpoint has one: model/lm.py)
    lm_weight: float = 0.02
    # weight of the word LM inside the search (shallow fusion at word boundaries, model/lm_fusion.py), on top of the
    # re-ranking; 0 = off. 0.1 with bonus 3 was the best beam-5 setting on the dev sets (weights/README.md)
    lm_fusion_weight: float = 0.1
    # added to each completed word's LM log-probability in fusion: without it, gluing words into one long unknown
    # word (one LM penalty instead of several) pays
    lm_fusion_bonus: float = 3.0
    # An utterance stops decoding once its best live hypothesis trails its best finished one by more than this
    # (the joint score, before length normalisation); 0 = only when beam_size hypotheses have finished (or the
    # length budget is spent). Most of a beam finishes long after the best one, far behind it.
    end_margin: float = 10.0
    # Beams whose joint score trails their utterance's best live one by more than this are dropped for the step
    # (the beam is as wide as the utterance with most hypotheses within the margin, up to beam_size, and widens
    # again when hypotheses draw level); 0 = off, always beam_size.
    beam_margin: float = 6.0
    use_cache: bool = True  # False recomputes the whole prefix every step (for measurement only)
    # The CTC head's best path alone (no decoder, no search): a few milliseconds, for streaming partials.
    ctc_greedy: bool = False

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError("n_best must be between 1 and beam_size")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError("ctc_weight must be in [0, 1]")
        if not 0.0 <= self.lm_weight <= 1.0:
            raise ValueError("lm_weight must be in [0, 1]")
        if not 0.0 <= self.lm_fusion_weight <= 1.0:
            raise ValueError("lm_fusion_weight must be in [0, 1]")
        if self.end_margin < 0 or self.beam_margin < 0:
            raise ValueError("end_margin and beam_margin must be >= 0")
        if not 0.0 <= self.lm_fusion_bonus <= 20.0:
            raise ValueError("lm_fusion_bonus must be in [0, 20]")
        if self.ctc_mode not in ("prefix", "rescore"):
            raise ValueError("ctc_mode must be 'prefix' or 'rescore'")


@torch.no_grad()
def beam_search(
    model: SpeechTransformer,
    memory: torch.Tensor,
    lengths: torch.Tensor,
    opts: DecodeOptions,
    ctc_logprobs: torch.Tensor | None = None,
    fusion: WordLMFusion | None = None,
    keep: int | None = None,
) -> list[list[Hypothesis]]:
    """Decode every utterance of ``memory`` ``(B, T, d)``; returns its ``keep`` (default ``opts.n_best``) best
    hypotheses, best first. ``end_margin`` stops an utterance only once ``opts.n_best`` have finished.

    ``ctc_logprobs`` ``(B, T, V)``: the CTC head's, for joint scoring or re-scoring; ``fusion``: a word LM that
    joins the search with weight ``opts.lm_fusion_weight``; ``keep``: more hypotheses than the caller's n-best,
    for its own re-ranking."""
    cfg, batch = model.cfg, memory.shape[0]
    beams = min(opts.beam_size, cfg.vocab_size // 2)
    max_lens = (lengths.float() * opts.max_len_ratio).ceil().long().clamp(1, cfg.max_target_positions - 1)
    steps = int(max_lens.max())
    decoder = DecoderScorer(model.decoder, memory, lengths, beams, steps, cfg.sos_id, opts.use_cache)
    ctc_weight = opts.ctc_weight if ctc_logprobs is not None else 0.0
    ctc = None
    if ctc_weight > 0 and opts.ctc_mode == "prefix":
        ctc = CTCPrefixScorer(ctc_logprobs, lengths, beams, blank=cfg.pad_id, eos=cfg.eos_id)
    others: list[tuple[Scorer, float]] = [(ctc, ctc_weight)] if ctc is not None else []
    if fusion is not None:
        fusion.start(batch * beams, memory.device)
        others.append((fusion, opts.lm_fusion_weight))
    # Only the decoder's best few tokens per beam are worth a CTC pass over the frames.
    width = None if ctc is None else min(cfg.vocab_size, opts.ctc_prebeam or max(beams + 1, math.ceil(1.5 * beams)))
    scorers = [decoder] + [scorer for scorer, _ in others]

    live = _Beams.start(max_lens, beams, steps)
    finished: list[list[Finished]] = [[] for _ in range(batch)]
    for t in range(steps):
        logp = decoder.extend(None).view(len(live.active), live.scores.shape[1], -1)
        logp, must_end = _length_rules(logp, t, live.max_len, opts.min_len, cfg.eos_id)
        step = _expand(live, logp, 1.0 if ctc is None else 1 - ctc_weight, others, width, beams)
        ends = step.token == cfg.eos_id
        _finish(step, ends, live, t, finished, ctc, beams)
        survivors = _narrow(_prune(step, ends, beams), opts.beam_margin)
        if not _advance(live, survivors, t, finished, must_end, scorers, beams, opts):
            break

    rescore = ctc_logprobs if ctc_weight > 0 and ctc is None else None
    return rank(finished, keep or opts.n_best, opts.length_penalty, opts.ctc_weight, rescore, lengths)


@dataclass
class _Beams:
    """The live hypotheses: K beams of each of ``n`` utterances still decoding, row ``u * K + k`` in every scorer."""

    active: list[int]  # original index of each utterance still decoding
    scores: torch.Tensor  # (n, K) what ranks them: the weighted sum of every scorer's log-scores
    att: torch.Tensor  # (n, K) the attention decoder's own log-probability
    max_len: torch.Tensor  # (n,) each utterance's token budget
    history: torch.Tensor  # (B*K, steps) the tokens so far; the first n*K rows are live

    @classmethod
    def start(cls, max_len: torch.Tensor, beams: int, steps: int) -> _Beams:
        batch, device = max_len.shape[0], max_len.device
        scores = torch.zeros(batch, beams, device=device)
        scores[:, 1:] = float("-inf")  # every beam starts identical: keep only one alive at the first step
        history = torch.zeros(batch * beams, steps, dtype=torch.long, device=device)
        return cls(list(range(batch)), scores, torch.zeros(batch, beams, device=device), max_len, history)


class _Step(NamedTuple):
    """The best extensions of each live utterance's beams, best first: ``(n, 2K)``, or ``(n, K)`` once pruned."""

    scores: torch.Tensor
    att: torch.Tensor
    parent: torch.Tensor  # the beam each extends
    token: torch.Tensor

    def take(self, index: torch.Tensor) -> _Step:
        return _Step(self.scores.gather(1, index), self.att.gather(1, index), self.parent.gather(1, index),
                     self.token.gather(1, index))


def _length_rules(logp: torch.Tensor, t: int, max_len: torch.Tensor, min_len: int,
                  eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """No end token before ``min_len`` tokens; only the end token once an utterance's budget is spent (returned
    as ``must_end``). ``logp`` ``(n, K, V)`` may be changed in place."""
    if t < min_len:
        logp[..., eos] = float("-inf")
    must_end = max_len == t + 1
    if must_end.any():
        logp = torch.where(must_end[:, None, None], torch.full_like(logp, float("-inf")), logp)
        logp[..., eos] = torch.where(must_end[:, None], 0.0, logp[..., eos])
    return logp, must_end


def _expand(live: _Beams, logp: torch.Tensor, weight: float, others: list[tuple[Scorer, float]],
            width: int | None, beams: int) -> _Step:
    """The ``2 * beams`` best extensions of each utterance (fewer if its live beams have fewer): the decoder's
    ``logp`` ``(n, k, V)`` with ``weight``, plus every other scorer's weighted score of the decoder's ``width`` best
    tokens per beam (all of them if None)."""
    n, live_beams, _ = logp.shape
    tokens = None
    if width is not None:
        logp, tokens = logp.topk(width, dim=-1)
    gain = logp if weight == 1.0 else weight * logp
    for scorer, w in others:
        extra = scorer.extend(None if tokens is None else tokens.view(n * live_beams, -1))
        gain = gain + w * extra.view(n, live_beams, -1)
    candidates = (live.scores[:, :, None] + gain).view(n, -1)
    top_scores, top_idx = candidates.topk(min(2 * beams, candidates.shape[1]), dim=1)
    parent = top_idx // gain.shape[-1]
    token = top_idx % gain.shape[-1] if tokens is None else tokens.view(n, -1).gather(1, top_idx)
    att = live.att.gather(1, parent) + logp.view(n, -1).gather(1, top_idx)
    return _Step(top_scores, att, parent, token)


def _finish(step: _Step, ends: torch.Tensor, live: _Beams, t: int, finished: list[list[Finished]],
            ctc: CTCPrefixScorer | None, beams: int) -> None:
    """End tokens (``ends``) ranked within the first ``beams`` candidates complete a hypothesis."""
    live_beams = live.scores.shape[1]
    for u, r in (ends[:, :beams] & torch.isfinite(step.scores[:, :beams])).nonzero().tolist():
        row = u * live_beams + int(step.parent[u, r])
        ctc_logprob = None if ctc is None else float(ctc.end_logprob(row))
        finished[live.active[u]].append(Finished(tuple(live.history[row, :t].tolist()), float(step.scores[u, r]),
                                                 float(step.att[u, r]), ctc_logprob))


def _prune(step: _Step, ends: torch.Tensor, beams: int) -> _Step:
    """The ``beams`` best candidates that do not end (``ends``) stay alive (at most half of the candidates)."""
    n, width = ends.shape
    order = torch.arange(width, device=ends.device).expand(n, -1)
    keep = (order + ends.long() * width).topk(min(beams, width // 2), dim=1, largest=False).indices
    return step.take(keep)


def _narrow(step: _Step, margin: float) -> _Step:
    """Drop the beams that trail their utterance's best by more than ``margin`` (0: none). The layout is utterance
    x beam, so the width is what the utterance with most beams within the margin needs; another utterance's beams
    beyond its own margin stay in the layout dead (score -inf), so no utterance's search depends on its company."""
    if margin <= 0 or step.scores.shape[1] == 1:
        return step
    within = step.scores >= step.scores[:, :1] - margin
    width = max(1, int(within.sum(1).max()))
    if bool(within.all()):
        return step
    columns = torch.arange(width, device=step.scores.device).expand(step.scores.shape[0], -1)
    narrowed = step.take(columns)
    return narrowed._replace(scores=narrowed.scores.masked_fill(~within[:, :width], float("-inf")))


def _decoding(finished: list[Finished], beams: int, best_live: float, opts: DecodeOptions) -> bool:
    """Whether an utterance goes on: fewer than ``beams`` finished, and (once it has its n-best) its best live
    hypothesis within ``end_margin`` of its best finished one (0: no margin rule)."""
    if len(finished) >= beams:
        return False
    margin = opts.end_margin
    return not (margin and len(finished) >= opts.n_best and best_live < max(h.score for h in finished) - margin)


def _advance(live: _Beams, step: _Step, t: int, finished: list[list[Finished]], must_end: torch.Tensor,
             scorers: list[Scorer], beams: int, opts: DecodeOptions) -> bool:
    """Move the survivors into place in every scorer. An utterance with K finished hypotheses, out of length
    budget, or whose live hypotheses trail its best finished one by ``opts.end_margin``, leaves the batch; returns
    False when none is left. The survivors may be fewer per utterance than the live beams were (``_narrow``)."""
    live_beams, new_beams = live.scores.shape[1], step.scores.shape[1]
    best_live = step.scores[:, 0].tolist()
    still = torch.tensor([_decoding(finished[i], beams, best, opts) for i, best in zip(live.active, best_live)],
                         device=must_end.device) & ~must_end
    if not bool(still.any()):
        return False
    keep = still.nonzero().squeeze(1)
    rows = (keep[:, None] * live_beams + step.parent[keep]).flatten()
    tokens = step.token[keep].flatten()
    live.history[: rows.numel()] = live.history[rows]
    live.history[: rows.numel(), t] = tokens
    for scorer in scorers:
        scorer.select(rows, tokens, new_beams if new_beams != live_beams else None)
    if keep.numel() < len(live.active):
        live.max_len = live.max_len[keep]
        live.active = [live.active[i] for i in keep.tolist()]
    live.scores, live.att = step.scores[keep], step.att[keep]
    return True
