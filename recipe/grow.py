"""Start a deeper Speech-Transformer from a trained shallower one.

Blocks are pre-LN residual maps ``x + f(x)``: a block whose output projections are zero is the identity,
so blocks appended on top of a trained stack leave its transcripts unchanged at step 0 and fine-tuning
only has to learn what the extra depth adds. On this CPU that is far cheaper than training the deeper
model from scratch.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from model.transformer import SpeechTransformer

_BLOCK = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.")
# The last linear layer of every residual branch, by stack.
_RESIDUAL_OUTPUTS = {
    "encoder": ("attn.out", "ff.3"),
    "decoder": ("self_attn.out", "cross_attn.out", "ff.3"),
}


def _depth(state: dict[str, torch.Tensor], stack: str) -> int:
    found = {int(m.group(2)) for k in state if (m := _BLOCK.match(k)) and m.group(1) == stack}
    return max(found) + 1 if found else 0


def load_grown(model: SpeechTransformer, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Load ``state`` into ``model``, which may have more encoder/decoder blocks; returns blocks added per stack.

    Every tensor of ``state`` must fit ``model`` exactly; the only keys allowed to be missing are those of
    blocks beyond the old depth, which start as identity maps.
    """
    added: dict[str, int] = {}
    for stack in ("encoder", "decoder"):
        old, new = _depth(state, stack), len(getattr(model, stack).blocks)
        if old > new:
            raise ValueError(f"{stack}: the checkpoint has {old} blocks, the model only {new}")
        added[stack] = new - old
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint tensors the model lacks: {unexpected[:5]}")
    for key in missing:
        m = _BLOCK.match(key)
        if m is None or int(m.group(2)) < _depth(state, m.group(1)):
            raise ValueError(f"checkpoint lacks {key}, which is not part of an added block")
    for stack, n in added.items():
        blocks = getattr(model, stack).blocks
        for block in list(blocks)[len(blocks) - n :]:
            for name in _RESIDUAL_OUTPUTS[stack]:
                layer = block.get_submodule(name)
                assert isinstance(layer, nn.Linear)
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
    return added
