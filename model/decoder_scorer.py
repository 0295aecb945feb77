"""The attention decoder as a beam-search scorer: next-token log-probabilities of every live hypothesis.

It owns what one search needs from the decoder: the encoder output's cross-attention keys/values, projected once
per utterance and shared by its beams, and the preallocated :class:`~model.kv_cache.KVCache` of the hypotheses'
self-attention, reordered in place by beam parent. When an utterance leaves the search its memory leaves too, so
each step's compute tracks the live hypotheses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .transformer import Decoder, padding_mask


class DecoderScorer:
    """Rows are ``utterance x beam``; with ``use_cache=False`` each step recomputes the whole prefix (measurement only)."""

    def __init__(self, decoder: Decoder, memory: torch.Tensor, lengths: torch.Tensor, beams: int, max_len: int,
                 sos_id: int, use_cache: bool = True) -> None:
        """``memory`` ``(U, T, d)`` is the encoder output, ``max_len`` the most tokens any hypothesis will take."""
        self.decoder, self.beams = decoder, beams
        self.mask = padding_mask(lengths, memory.shape[1])
        self.memory_kv = decoder.memory_kv(memory)
        rows = memory.shape[0] * beams
        self.last = torch.full((rows,), sos_id, dtype=torch.long, device=memory.device)
        dtype = self.memory_kv[0][0].dtype
        self.cache = decoder.new_cache(rows, max_len, memory.device, dtype) if use_cache else None
        self.prefix = self.last[:, None]  # whole prefixes, read only without the cache

    def extend(self, tokens: torch.Tensor | None) -> torch.Tensor:
        """Log-probabilities of each row's next token: ``(rows, V)``, or of the given candidates ``(rows, C)``."""
        if self.cache is not None:
            logits = self.decoder.step(self.last, self.cache, self.memory_kv, self.mask, self.beams)
        else:
            b = self.beams
            kv = [(k.repeat_interleave(b, 0), v.repeat_interleave(b, 0)) for k, v in self.memory_kv]
            logits = self.decoder(self.prefix, kv, self.mask.repeat_interleave(b, 0))[:, -1]
        logp = F.log_softmax(logits.float(), dim=-1)
        return logp if tokens is None else logp.gather(1, tokens)

    def select(self, rows: torch.Tensor, tokens: torch.Tensor, beams: int | None = None) -> None:
        """Reorder the cache by beam parent; ``rows`` come in whole utterances, so a dropped one frees its memory."""
        if self.cache is not None:
            self.cache.reorder(rows)
        else:
            self.prefix = torch.cat([self.prefix[rows], tokens[:, None]], 1)
        self.last = tokens
        new_beams = beams or self.beams
        if rows.numel() < self.mask.shape[0] * new_beams:
            keep = rows[::new_beams] // self.beams
            self.memory_kv = [(k[keep], v[keep]) for k, v in self.memory_kv]
            self.mask = self.mask[keep]
        self.beams = new_beams
