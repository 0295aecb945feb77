"""Greedy and batched beam search over the attention decoder, with an explicit KV cache.

B utterances x K beams run as one ``(B*K)`` batch per step. The encoder output's cross-attention keys/values are
projected once per utterance and shared by its beams; decoder self-attention keys/values live in a preallocated
:class:`~model.kv_cache.KVCache` reordered by beam parent. An utterance whose beams are all finished leaves the
active batch, so each step's compute tracks the live hypotheses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .transformer import SpeechTransformer, padding_mask


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 5
    n_best: int = 1
    length_penalty: float = 1.0  # rank by score / len ** length_penalty (0 = raw log-probability)
    max_len_ratio: float = 1.0  # at most this many output tokens per encoder frame (40 ms)
    min_len: int = 0  # the end token is not allowed before this many tokens
    ctc_weight: float = 0.3  # weight of the CTC log-likelihood when re-ranking finished hypotheses
    use_cache: bool = True  # False recomputes the whole prefix every step (for measurement only)

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError("n_best must be between 1 and beam_size")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError("ctc_weight must be in [0, 1]")


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

    active = list(range(batch))  # original index of each utterance still decoding
    max_len_t = torch.tensor(max_lens, device=device)
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")  # every beam starts identical: keep only one alive at the first step
    history = torch.zeros(batch * beams, steps, dtype=torch.long, device=device)
    last = torch.full((batch * beams,), cfg.sos_id, dtype=torch.long, device=device)
    cache = dec.new_cache(batch * beams, steps, device, mem_kv[0][0].dtype) if opts.use_cache else None
    finished: list[list[tuple[tuple[int, ...], float]]] = [[] for _ in range(batch)]

    for t in range(steps):
        n = len(active)
        if cache is not None:
            logits = dec.step(last, cache, mem_kv, mask, beams)
        else:
            prefix = torch.cat([torch.full((n * beams, 1), cfg.sos_id, device=device), history[: n * beams, :t]], 1)
            kv = [(k.repeat_interleave(beams, 0), v.repeat_interleave(beams, 0)) for k, v in mem_kv]
            logits = dec(prefix, kv, mask.repeat_interleave(beams, 0))[:, -1]
        logp = F.log_softmax(logits.float(), dim=-1).view(n, beams, -1)
        vocab = logp.shape[-1]
        if t < opts.min_len:
            logp[..., cfg.eos_id] = float("-inf")
        must_end = max_len_t == t + 1  # out of length budget: only the end token may follow
        if must_end.any():
            logp = torch.where(must_end[:, None, None], torch.full_like(logp, float("-inf")), logp)
            logp[..., cfg.eos_id] = torch.where(must_end[:, None], 0.0, logp[..., cfg.eos_id])
        cand = (scores[:, :, None] + logp).view(n, -1)
        top_scores, top_idx = cand.topk(2 * beams, dim=1)
        parent, token = top_idx // vocab, top_idx % vocab
        is_end = token == cfg.eos_id

        # End tokens ranked within the first K candidates complete a hypothesis.
        done_now = (is_end[:, :beams] & torch.isfinite(top_scores[:, :beams])).nonzero().tolist()
        for u, r in done_now:
            row = u * beams + int(parent[u, r])
            seq = tuple(history[row, :t].tolist())
            finished[active[u]].append((seq, float(top_scores[u, r])))

        # The K best candidates that do not end stay alive.
        rank = torch.arange(2 * beams, device=device).expand(n, -1)
        keep_idx = (rank + is_end.long() * 2 * beams).topk(beams, dim=1, largest=False).indices
        scores = top_scores.gather(1, keep_idx)
        parent, token = parent.gather(1, keep_idx), token.gather(1, keep_idx)

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
        if keep_u.numel() < n:
            mem_kv = [(k[keep_u], v[keep_u]) for k, v in mem_kv]
            mask, max_len_t = mask[keep_u], max_len_t[keep_u]
            active = [active[i] for i in keep_u.tolist()]
        scores = scores[keep_u]

    return _rank(finished, opts, ctc_logprobs, lengths)


def _rank(
    finished: list[list[tuple[tuple[int, ...], float]]],
    opts: DecodeOptions,
    ctc_logprobs: torch.Tensor | None,
    lengths: torch.Tensor,
) -> list[list[Hypothesis]]:
    results = []
    for i, hyps in enumerate(finished):
        ctc = _ctc_scores(ctc_logprobs[i, : int(lengths[i])], [h for h, _ in hyps]) if ctc_logprobs is not None and opts.ctc_weight > 0 else None
        ranked = []
        for j, (seq, att) in enumerate(hyps):
            joint = att
            if ctc is not None:
                # CTC cannot emit more labels than frames: such hypotheses rank below every possible one.
                joint = (1 - opts.ctc_weight) * att + opts.ctc_weight * ctc[j] if math.isfinite(ctc[j]) else att - 1e4
            ranked.append(Hypothesis(seq, _normalise(joint, len(seq) + 1, opts.length_penalty), att, None if ctc is None else ctc[j]))
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
