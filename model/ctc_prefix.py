"""CTC prefix scores for beam search: how likely the CTC head finds each partial hypothesis (Watanabe et al., 2017).

The attention decoder alone may skip or repeat words, or stop early, because nothing ties its output to the audio's
length. The CTC head is monotonic in time; scoring every beam extension with the probability that the CTC output
*starts with* that prefix keeps the joint search on the audio. Every row (one hypothesis) carries, for each encoder
frame ``t``, the log-probability that the first ``t + 1`` frames emit its prefix, ending in a label (``n``) or in
blank (``b``). Extending a row by a token is one pass over the frames, vectorised over rows and candidate tokens.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


class CTCPrefixScorer:
    """Prefix log-probabilities for ``utterances x beams`` rows, kept in the same row order as the beam search.

    Tensors are time-major (``(T, rows, ...)``) so the recursion over frames reads contiguous slices.
    """

    def __init__(self, logprobs: torch.Tensor, lengths: torch.Tensor, beams: int, blank: int, eos: int) -> None:
        """``logprobs`` ``(U, T, V)`` are the CTC head's log-softmax outputs, ``lengths`` ``(U,)`` its valid frames."""
        u, frames, _ = logprobs.shape
        x = logprobs.float().transpose(0, 1).contiguous()  # (T, U, V)
        # Frames past an utterance's end emit blank with certainty: the recursion carries the totals through them
        # unchanged, so the last frame holds every row's complete-sequence probability.
        pad = torch.arange(frames, device=x.device)[:, None] >= lengths[None, :].to(x.device)
        x[pad] = NEG_INF
        x[..., blank] = torch.where(pad, 0.0, x[..., blank])
        self.x, self.blank, self.eos, self.frames = x, blank, eos, frames
        self.utt = torch.arange(u, device=x.device).repeat_interleave(beams)  # utterance of each row
        # The empty prefix: no label yet, only blanks so far.
        self.r_n = torch.full((frames, u * beams), NEG_INF, device=x.device)
        self.r_b = x[:, self.utt, blank].cumsum(0)
        self.last = torch.full((u * beams,), -1, dtype=torch.long, device=x.device)
        self.length = 0  # labels in every row's prefix
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(rows, C)`` that the CTC output starts with each row extended by each candidate.

        For ``eos`` it is the probability of exactly the row's hypothesis instead. Every candidate's state is kept
        until :meth:`select` picks the survivors.
        """
        rows, cands = tokens.shape
        x_c = self.x[:, self.utt[:, None], tokens]  # (T, rows, C)
        x_b = self.x[:, self.utt, self.blank][..., None]  # (T, rows, 1)
        total = torch.logaddexp(self.r_n, self.r_b)
        # A repeated label needs a blank in between: only paths that end in blank may emit it again.
        repeat = (tokens == self.last[:, None])[None]
        phi = torch.where(repeat, self.r_b[..., None], total[..., None])  # (T, rows, C)
        r_n = torch.full_like(x_c, NEG_INF)
        r_b = torch.full_like(x_c, NEG_INF)
        if self.length == 0:
            r_n[0] = x_c[0]
        # L labels need at least L frames: the new one cannot come before frame L (earlier states stay -inf).
        start = max(1, self.length)
        for t in range(start, self.frames):
            r_n[t] = torch.logaddexp(r_n[t - 1], phi[t - 1]) + x_c[t]
            r_b[t] = torch.logaddexp(r_n[t - 1], r_b[t - 1]) + x_b[t]
        # The new label's first frame is t: the old prefix was complete by frame t - 1.
        first = phi[start - 1: self.frames - 1] + x_c[start:]
        if self.length == 0:
            first = torch.cat([x_c[:1], first])
        scores = torch.where(tokens == self.eos, total[-1][:, None], torch.logsumexp(first, 0))
        scores = scores.masked_fill(tokens == self.blank, NEG_INF)  # the blank is CTC's, never an output token
        self._pending = (tokens, r_n, r_b, scores)
        return scores

    def select(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Candidate ``cols[i]`` of row ``rows[i]`` becomes row ``i``; returns the survivors' prefix scores."""
        if self._pending is None:
            raise RuntimeError("extend() must come before select()")
        tokens, r_n, r_b, scores = self._pending
        self.r_n, self.r_b = r_n[:, rows, cols], r_b[:, rows, cols]
        self.last = tokens[rows, cols]
        self.utt = self.utt[rows]
        self.length += 1
        self._pending = None
        return scores[rows, cols]
