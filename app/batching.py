"""Which pending segments go into the next model batch: a pure function, so the policy is testable alone."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol, TypeVar


class Batchable(Protocol):
    seconds: float
    options: Hashable


S = TypeVar("S", bound=Batchable)


def select_batch(pending: Sequence[S], max_items: int, max_padded_seconds: float) -> list[S]:
    """The oldest segment plus the pending ones nearest its length that share its decode options.

    A batch costs about ``items x longest item`` (everything is padded to the longest), so the budget counts
    padded seconds; picking neighbours by length keeps that padding small. The oldest segment always goes, even
    alone over budget, so nothing starves.
    """
    return _grow(pending, max_items, max_padded_seconds)[0]


def batch_is_full(pending: Sequence[Batchable], max_items: int, max_padded_seconds: float) -> bool:
    """True once waiting longer cannot make the next batch bigger: it holds ``max_items``, or one more segment
    (even one no longer than its longest) would overrun the padded budget that :func:`select_batch` counts."""
    if not pending:
        return False
    batch, longest = _grow(pending, max_items, max_padded_seconds)
    return len(batch) >= max_items or longest * (len(batch) + 1) > max_padded_seconds


def _grow(pending: Sequence[S], max_items: int, max_padded_seconds: float) -> tuple[list[S], float]:
    """The batch :func:`select_batch` picks, and its longest segment."""
    if not pending:
        return [], 0.0
    head = pending[0]
    peers = sorted((s for s in pending[1:] if s.options == head.options), key=lambda s: abs(s.seconds - head.seconds))
    batch, longest = [head], head.seconds
    for seg in peers:
        if len(batch) >= max_items:
            break
        widest = max(longest, seg.seconds)
        if widest * (len(batch) + 1) > max_padded_seconds:
            continue
        batch.append(seg)
        longest = widest
    return batch, longest
