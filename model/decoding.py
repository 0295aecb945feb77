"""Greedy and batched beam search over the attention decoder, with an explicit KV cache.

B utterances x K beams run as one ``(B*K)`` batch per step. The encoder output's cross-attention keys/values are
projected once per utterance and shared by its beams; decoder self-attention keys/values live in a preallocated
:class:`~model.kv_cache.KVCache` reordered by beam parent. An utterance whose beams are all finished leaves the
active batch, so each step's compute tracks the live hypotheses.

With a CTC head the search is joint by default: each beam's best few decoder tokens are also scored by the CTC
prefix probability (:mod:`model.ctc_prefix`), which keeps hypotheses aligned with the audio (no dropped or looped
words). ``ctc_mode="rescore"`` instead only re-ranks the finished n-best with the whole-sequence CTC likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .ctc_prefix import CTCPrefixScorer
from .lm_fusion import WordLMFusion
from .transformer import SpeechTransformer, padding_mask

IMPOSSIBLE = -1e4  # a finite stand-in for log(0): such hypotheses rank below every possible one but stay comparable


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
    use_cache: bool = True  # False recomputes the whole prefix every step (for measurement only)

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
        if not 0.0 <= self.lm_fusion_bonus <= 20.0:
            raise ValueError("lm_fusion_bonus must be in [0, 20]")
        if self.ctc_mode not in ("prefix", "rescore"):
            raise ValueError("ctc_mode must be 'prefix' or 'rescore'")


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]
    score: float  # the ranking score (length-normalised, CTC-combined when enabled)
    att_logprob: float  # sum of decoder log-probabilities, end token included
    ctc_logprob: float | None = None


def _normalise(logprob: float, length: int, alpha: float) -> float:
    return logprob / max(length, 1) ** alpha


@torch.no_grad()
def beam_search(
    model: SpeechTransformer,
    memory: torch.Tensor,
    lengths: torch.Tensor,
    opts: DecodeOptions,
    ctc_logprobs: torch.Tensor | None = None,
    fusion: WordLMFusion | None = None,
) -> list[list[Hypothesis]]:
    """Decode every utterance of ``memory`` ``(B, T, d)``; returns its ``opts.n_best`` hypotheses, best first."""
    cfg, dec = model.cfg, model.decoder
    batch, frames, _ = memory.shape
    beams = min(opts.beam_size, cfg.vocab_size // 2)
    device = memory.device
    mask = padding_mask(lengths, frames)
    mem_kv = dec.memory_kv(memory)
    max_lens = (lengths.float() * opts.max_len_ratio).ceil().long().clamp(1, cfg.max_target_positions - 1).tolist()
    steps = max(max_lens)
    weight = opts.ctc_weight if ctc_logprobs is not None else 0.0
    prefix = None
    if weight > 0 and opts.ctc_mode == "prefix":
        prefix = CTCPrefixScorer(ctc_logprobs, lengths, beams, blank=cfg.pad_id, eos=cfg.eos_id)
        width = min(cfg.vocab_size, opts.ctc_prebeam or max(beams + 1, math.ceil(1.5 * beams)))
        ctc_prev = torch.zeros(batch * beams, device=device)

    active = list(range(batch))  # original index of each utterance still decoding
    max_len_t = torch.tensor(max_lens, device=device)
    scores = torch.zeros(batch, beams, device=device)  # what ranks the beams: attention, or joint in prefix mode
    scores[:, 1:] = float("-inf")  # every beam starts identical: keep only one alive at the first step
    att = torch.zeros(batch, beams, device=device)  # the attention decoder's own log-probability
    history = torch.zeros(batch * beams, steps, dtype=torch.long, device=device)
    last = torch.full((batch * beams,), cfg.sos_id, dtype=torch.long, device=device)
    cache = dec.new_cache(batch * beams, steps, device, mem_kv[0][0].dtype) if opts.use_cache else None
    finished: list[list[_Finished]] = [[] for _ in range(batch)]
    if fusion is not None:
        fusion.start(batch * beams)

    for t in range(steps):
        n = len(active)
        if cache is not None:
            logits = dec.step(last, cache, mem_kv, mask, beams)
        else:
            sos = torch.full((n * beams, 1), cfg.sos_id, device=device)
            prefix_tokens = torch.cat([sos, history[: n * beams, :t]], 1)
            kv = [(k.repeat_interleave(beams, 0), v.repeat_interleave(beams, 0)) for k, v in mem_kv]
            logits = dec(prefix_tokens, kv, mask.repeat_interleave(beams, 0))[:, -1]
        logp = F.log_softmax(logits.float(), dim=-1).view(n, beams, -1)
        vocab = logp.shape[-1]
        if t < opts.min_len:
            logp[..., cfg.eos_id] = float("-inf")
        must_end = max_len_t == t + 1  # out of length budget: only the end token may follow
        if must_end.any():
            logp = torch.where(must_end[:, None, None], torch.full_like(logp, float("-inf")), logp)
            logp[..., cfg.eos_id] = torch.where(must_end[:, None], 0.0, logp[..., cfg.eos_id])

        if prefix is None:
            gain, cand_tokens, cand_ctc, per_beam = logp, None, None, vocab
        else:
            # Only the decoder's best few tokens per beam are worth a CTC pass over the frames.
            att_top, cand_tokens = logp.topk(width, dim=-1)
            cand_ctc = prefix.extend(cand_tokens.view(n * beams, width)).view(n, beams, width)
            ctc_gain = torch.where(torch.isfinite(cand_ctc), cand_ctc - ctc_prev.view(n, beams, 1), IMPOSSIBLE)
            gain, per_beam = (1 - weight) * att_top + weight * ctc_gain, width
            logp = att_top
        if fusion is not None:
            cands = cand_tokens.view(n * beams, width) if cand_tokens is not None else \
                torch.arange(vocab, device=device).expand(n * beams, vocab)
            gain = gain + fusion.bonus(cands).view(n, beams, -1)
        cand = (scores[:, :, None] + gain).view(n, -1)
        top_scores, top_idx = cand.topk(2 * beams, dim=1)
        parent, col = top_idx // per_beam, top_idx % per_beam
        token = col if cand_tokens is None else cand_tokens.view(n, -1).gather(1, top_idx)
        top_att = att.gather(1, parent) + logp.view(n, -1).gather(1, top_idx)
        is_end = token == cfg.eos_id

        # End tokens ranked within the first K candidates complete a hypothesis.
        done_now = (is_end[:, :beams] & torch.isfinite(top_scores[:, :beams])).nonzero().tolist()
        for u, r in done_now:
            row = u * beams + int(parent[u, r])
            ctc = None if cand_ctc is None else float(cand_ctc.view(n, -1)[u, int(top_idx[u, r])])
            finished[active[u]].append(_Finished(tuple(history[row, :t].tolist()), float(top_scores[u, r]),
                                                 float(top_att[u, r]), ctc))

        # The K best candidates that do not end stay alive.
        rank = torch.arange(2 * beams, device=device).expand(n, -1)
        keep_idx = (rank + is_end.long() * 2 * beams).topk(beams, dim=1, largest=False).indices
        scores, att = top_scores.gather(1, keep_idx), top_att.gather(1, keep_idx)
        parent, col, token = parent.gather(1, keep_idx), col.gather(1, keep_idx), token.gather(1, keep_idx)

        still = torch.tensor([len(finished[i]) < beams for i in active], device=device) & ~must_end
        if not bool(still.any()):
            break
        keep_u = still.nonzero().squeeze(1)
        rows = (keep_u[:, None] * beams + parent[keep_u]).flatten()
        history[: rows.numel()] = history[rows]
        history[: rows.numel(), t] = token[keep_u].flatten()
        last = token[keep_u].flatten()
        if cache is not None:
            cache.select(rows)
        if prefix is not None:
            ctc_prev = prefix.select(rows, col[keep_u].flatten())
        if fusion is not None:
            fusion.select(rows.tolist(), last.tolist())
        if keep_u.numel() < n:
            mem_kv = [(k[keep_u], v[keep_u]) for k, v in mem_kv]
            mask, max_len_t = mask[keep_u], max_len_t[keep_u]
            active = [active[i] for i in keep_u.tolist()]
        scores, att = scores[keep_u], att[keep_u]

    rescore = ctc_logprobs if weight > 0 and prefix is None else None
    return _rank(finished, opts, rescore, lengths)


@dataclass(frozen=True)
class _Finished:
    tokens: tuple[int, ...]
    score: float  # the search's own score (attention, or joint in prefix mode), not yet length-normalised
    att: float
    ctc: float | None


def _rank(
    finished: list[list[_Finished]],
    opts: DecodeOptions,
    rescore_ctc: torch.Tensor | None,
    lengths: torch.Tensor,
) -> list[list[Hypothesis]]:
    """Length-normalise and sort; with ``rescore_ctc``, first mix in the CTC likelihood of each whole hypothesis."""
    results = []
    for i, hyps in enumerate(finished):
        if rescore_ctc is not None:
            ctc = _ctc_scores(rescore_ctc[i, : int(lengths[i])], [h.tokens for h in hyps])
            # CTC cannot emit more labels than frames: such hypotheses rank below every possible one.
            hyps = [_Finished(h.tokens, (1 - opts.ctc_weight) * h.att + opts.ctc_weight * c if math.isfinite(c)
                              else h.att + IMPOSSIBLE, h.att, c) for h, c in zip(hyps, ctc)]
        ranked = [Hypothesis(h.tokens, _normalise(h.score, len(h.tokens) + 1, opts.length_penalty), h.att, h.ctc)
                  for h in hyps]
        ranked.sort(key=lambda h: h.score, reverse=True)
        results.append(ranked[: opts.n_best])
    return results


def _ctc_scores(logprobs: torch.Tensor, seqs: list[tuple[int, ...]], blank: int = 0) -> list[float]:
    """CTC log-likelihood of each candidate transcript given one utterance's ``(T, V)`` CTC log-probabilities."""
    if not seqs or logprobs.shape[0] == 0:
        return [float("-inf")] * len(seqs)
    n, frames = len(seqs), logprobs.shape[0]
    targets = torch.tensor([tok for s in seqs for tok in s], dtype=torch.long)
    lp = logprobs.float().cpu()[:, None, :].expand(frames, n, -1)
    loss = F.ctc_loss(
        lp, targets, torch.full((n,), frames, dtype=torch.long), torch.tensor([len(s) for s in seqs]),
        blank=blank, reduction="none", zero_infinity=False,
    )
    return [-float(x) for x in loss]


@torch.no_grad()
def greedy_search(model: SpeechTransformer, memory: torch.Tensor, lengths: torch.Tensor, max_len_ratio: float = 1.0) -> list[tuple[int, ...]]:
    """Arg-max decoding with the KV cache; the reference that beam size 1 must reproduce."""
    cfg, dec = model.cfg, model.decoder
    batch = memory.shape[0]
    mask = padding_mask(lengths, memory.shape[1])
    mem_kv = dec.memory_kv(memory)
    max_lens = (lengths.float() * max_len_ratio).ceil().long().clamp(1, cfg.max_target_positions - 1)
    steps = int(max_lens.max())
    cache = dec.new_cache(batch, steps, memory.device, mem_kv[0][0].dtype)
    last = torch.full((batch,), cfg.sos_id, dtype=torch.long, device=memory.device)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
    for t in range(steps):
        logits = dec.step(last, cache, mem_kv, mask, 1)
        last = logits.argmax(-1)
        last = torch.where(max_lens == t + 1, torch.full_like(last, cfg.eos_id), last)
        for i in (~done).nonzero().squeeze(1).tolist():
            if int(last[i]) != cfg.eos_id:
                out[i].append(int(last[i]))
        done |= last == cfg.eos_id
        if bool(done.all()):
            break
    return [tuple(o) for o in out]
