"""CTC prefix scores for beam search: how likely the CTC head finds each partial hypothesis (Watanabe et al., 2017).

The attention decoder alone may skip or repeat words, or stop early, because nothing ties its output to the audio's
length. The CTC head is monotonic in time; scoring every beam extension with the probability that the CTC output
*starts with* that prefix keeps the joint search on the audio. Every row (one hypothesis) carries, for each encoder
frame ``t``, the log-probability that the first ``t + 1`` frames emit its prefix, ending in a label (``n``) or in
blank (``b``). Scoring a row's candidate tokens is one vectorised pass over the frames; the forward recursion then
runs only for the candidates the beam keeps.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
CLOSED_FORM_MAX = 16384  # frames x rows up to which the loop-free solver is faster (measured on a 2-core CPU)
UNLIKELY = 1e6  # log-probabilities are clamped to >= -UNLIKELY; a score below -UNLIKELY / 2 means impossible
IMPOSSIBLE = -1e4  # a finite stand-in for log(0): such hypotheses rank below every possible one but stay comparable


class CTCPrefixScorer:
    """Prefix log-probabilities for ``utterances x beams`` rows, kept in the same row order as the beam search.

    Tensors are time-major (``(T, rows, ...)``), so each frame is a contiguous slice.
    """

    def __init__(self, logprobs: torch.Tensor, lengths: torch.Tensor, beams: int, blank: int, eos: int) -> None:
        """``logprobs`` ``(U, T, V)`` are the CTC head's log-softmax outputs, ``lengths`` ``(U,)`` its valid frames."""
        u, frames, _ = logprobs.shape
        x = logprobs.float().transpose(0, 1).contiguous()  # (T, U, V)
        # Frames past an utterance's end emit blank with certainty: the recursion carries the totals through them
        # unchanged, so the last frame holds every row's complete-sequence probability. Labels there get a huge
        # but finite cost (the closed form subtracts cumulative sums, which must stay finite).
        pad = torch.arange(frames, device=x.device)[:, None] >= lengths[None, :].to(x.device)
        x = x.clamp(min=-UNLIKELY).masked_fill(pad[..., None], -UNLIKELY)
        x[..., blank] = x[..., blank].masked_fill(pad, 0.0)
        self.x, self.blank, self.eos, self.frames = x, blank, eos, frames
        self.probs = x.double().exp().transpose(0, 1).contiguous()  # (U, T, V) what extend() multiplies
        self.beams = beams
        self.utt = torch.arange(u, device=x.device).repeat_interleave(beams)  # utterance of each row
        # The empty prefix: no label yet, only blanks so far.
        self.r_n = torch.full((frames, u * beams), NEG_INF, dtype=x.dtype, device=x.device)
        self.r_b = x[:, self.utt, blank].cumsum(0)
        self.last = torch.full((u * beams,), -1, dtype=torch.long, device=x.device)
        self.length = 0  # labels in every row's prefix
        self.prev = torch.zeros(u * beams, dtype=x.dtype, device=x.device)  # each row's own prefix log-probability
        self._ends = torch.zeros_like(self.prev)
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def extend(self, tokens: torch.Tensor | None) -> torch.Tensor:
        """How much each candidate ``(rows, C)`` (``None``: every token) changes each row's prefix log-probability.

        The prefix log-probability is that of the CTC output starting with the row extended by the candidate; for
        ``eos``, of being exactly the row's hypothesis. An impossible extension gains :data:`IMPOSSIBLE`. A
        candidate's score needs only its parent's state, not its own forward variables: those are computed in
        :meth:`select`, for the few candidates that survive (a beam keeps ``rows`` of ``rows x C``), which saves
        most of the recursion's cost.

        The score is ``log sum_t phi_prev[t] * p_t(c)``: for every candidate of a row but its last label the same
        ``phi_prev`` (the prefix complete by frame ``t - 1``), so all tokens of all beams of an utterance are one
        ``(K, T) x (T, V)`` product of probabilities, scaled by each row's largest ``phi_prev`` and in float64
        (a log-probability down to about -700 stays finite; below that the extension counts as impossible).
        """
        rows = self.last.numel()
        total = torch.logaddexp(self.r_n, self.r_b)
        # phi_prev[t]: the old prefix complete by frame t - 1, so the new label may start at frame t. Before the
        # first frame only the empty prefix is complete. A repeated label needs a blank in between: only paths
        # that end in blank may emit it again.
        first = torch.full_like(total[:1], 0.0 if self.length == 0 else NEG_INF)
        phi_prev = torch.cat([first, total[:-1]])
        phi_prev_repeat = torch.cat([first, self.r_b[:-1]])
        every = self._log_dot(phi_prev, self.probs[self.utt[:: self.beams]])  # (rows, V)
        again = self._log_dot(phi_prev_repeat, self.probs[self.utt, :, self.last.clamp(min=0)])[:, 0]
        if tokens is None:
            tokens = torch.arange(self.x.shape[-1], device=self.x.device).expand(rows, -1)
        prefix = every.gather(1, tokens)
        repeat = tokens == self.last[:, None]
        prefix = torch.where(repeat, again[:, None], prefix)
        scores = torch.where(tokens == self.eos, total[-1][:, None], prefix)
        # The blank is CTC's, never an output token; a path through a clamped frame is no path at all.
        scores = scores.masked_fill((tokens == self.blank) | (scores < -UNLIKELY / 2), NEG_INF)
        self._pending = (tokens, phi_prev, phi_prev_repeat, scores)
        self._ends = total[-1].masked_fill(total[-1] < -UNLIKELY / 2, NEG_INF)
        return torch.where(torch.isfinite(scores), scores - self.prev[:, None], IMPOSSIBLE)

    def _log_dot(self, log_a: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``log sum_t exp(log_a[t, r]) * probs[u, t, v]`` for ``log_a`` ``(T, rows)`` and the probabilities of
        each row's utterance ``probs`` ``(n, T, V)`` (gives ``(rows, V)``), or of one token per row ``(rows, T)``
        (gives ``(rows, 1)``)."""
        rows = log_a.shape[1]
        peak = log_a.max(0).values.clamp(min=-UNLIKELY)
        a = (log_a - peak).double().exp().T  # (rows, T)
        if probs.dim() == 2:
            dot = (a * probs).sum(1, keepdim=True)
        else:
            dot = torch.bmm(a.view(probs.shape[0], -1, self.frames), probs).view(rows, -1)
        return dot.log().to(log_a.dtype) + peak[:, None]

    def end_logprob(self, rows: torch.Tensor | int) -> torch.Tensor:
        """Log-probability that the CTC output is exactly the hypothesis of each of ``rows`` (of the last
        :meth:`extend`): what the search reports for a hypothesis that ends there."""
        return self._ends[rows]

    def select(self, rows: torch.Tensor, tokens: torch.Tensor, beams: int | None = None) -> None:
        """Row ``rows[i]`` extended by ``tokens[i]`` (one of its candidates in :meth:`extend`) becomes row ``i``;
        ``beams`` rows per utterance from now on (None: unchanged)."""
        if self._pending is None:
            raise RuntimeError("extend() must come before select()")
        candidates, phi_prev, phi_prev_repeat, scores = self._pending
        cols = (candidates[rows] == tokens[:, None]).int().argmax(1)
        utt = self.utt[rows]
        repeat = (tokens == self.last[rows])[None]
        phi = torch.where(repeat, phi_prev_repeat[:, rows], phi_prev[:, rows])
        x_c = self.x[:, utt, tokens]
        x_b = self.x[:, utt, self.blank]
        solve = _closed_form if rows.numel() * self.frames <= CLOSED_FORM_MAX else _frame_by_frame
        self.r_n, self.r_b = solve(phi, x_c, x_b, max(1, self.length))
        self.last = tokens
        self.utt = utt
        self.beams = beams or self.beams
        self.length += 1
        self.prev = scores[rows, cols]
        self._pending = None


def _frame_by_frame(phi_prev: torch.Tensor, x_c: torch.Tensor, x_b: torch.Tensor,
                    start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook recursion: a few small ops per frame. Cheapest when frames x rows is large.

    A prefix of ``start`` labels cannot end before frame ``start``: those frames are impossible and skipped.
    """
    impossible = torch.full_like(x_c[0], NEG_INF)
    r_n = [impossible] * (start - 1) + [phi_prev[0] + x_c[0] if start == 1 else impossible]
    r_b = [impossible] * start
    for t in range(start, x_c.shape[0]):
        prev = r_n[-1]
        r_n.append(torch.logaddexp(prev, phi_prev[t]).add_(x_c[t]))
        r_b.append(torch.logaddexp(prev, r_b[-1]).add_(x_b[t]))
    return torch.stack(r_n), torch.stack(r_b)


def _closed_form(phi_prev: torch.Tensor, x_c: torch.Tensor, x_b: torch.Tensor,
                 start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same recursion without a loop over frames; cheapest when frames x rows is small.

    ``r_n[t] = (r_n[t-1] + phi_prev[t]) * x_c[t]`` (in probabilities) is a first-order linear recurrence:
    ``r_n[t] = sum over s <= t of phi_prev[s] * prod(x_c[s..t])``, i.e. a cumulative sum of ``phi_prev`` rescaled by
    cumulative products of ``x_c``; likewise ``r_b[t] = sum over s < t of r_n[s] * prod(x_b[s+1..t])``.
    The cumulative sums reach millions in magnitude, so this runs in float64 and returns the inputs' dtype.
    ``start`` is not needed here: frames before it come out impossible (-inf) on their own.
    """
    dtype = x_c.dtype
    phi_prev, x_c, x_b = phi_prev.double(), x_c.double(), x_b.double()
    c = x_c.cumsum(0)
    c_prev = torch.cat([torch.zeros_like(c[:1]), c[:-1]])
    r_n = c + torch.logcumsumexp(phi_prev - c_prev, 0)
    cb = x_b.cumsum(0)
    r_b = cb + torch.logcumsumexp(torch.cat([torch.full_like(r_n[:1], NEG_INF), r_n[:-1] - cb[:-1]]), 0)
    return r_n.to(dtype), r_b.to(dtype)
