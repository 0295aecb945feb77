"""Start a deeper Speech-Transformer from a trained shallower one.

Blocks are pre-LN residual maps ``x + f(x)``: a block whose output projections are zero is the identity,
so blocks appended on top of a trained stack leave its transcripts unchanged at step 0 and fine-tuning
only has to learn what the extra depth adds. On this CPU that is far cheaper than training the deeper
model from scratch.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import torch
from torch import nn

from model.checkpoint import load_checkpoint, save_checkpoint
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
    old = {stack: _depth(state, stack) for stack in _RESIDUAL_OUTPUTS}
    added: dict[str, int] = {}
    for stack, depth in old.items():
        new = len(getattr(model, stack).blocks)
        if depth > new:
            raise ValueError(f"{stack}: the checkpoint has {depth} blocks, the model only {new}")
        added[stack] = new - depth
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint tensors the model lacks: {unexpected[:5]}")
    for key in missing:
        m = _BLOCK.match(key)
        if m is None or int(m.group(2)) < old[m.group(1)]:
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


def grow_like(base_dir: Path, like_dir: Path, out: Path) -> Path:
    """Export ``base_dir`` in ``like_dir``'s deeper architecture, the added blocks' inner weights from ``like_dir``."""
    base, like = load_checkpoint(base_dir), load_checkpoint(like_dir)
    model = like.model  # the deeper architecture, and the inner weights of its extra blocks
    added = load_grown(model, base.model.state_dict())
    if not any(added.values()):
        raise ValueError(f"{like_dir} is no deeper than {base_dir}: nothing to grow")
    provenance = {"grown": {"from": str(base_dir), "provenance": base.provenance, "blocks_added": added,
                            "inner_weights_of_added_blocks": str(like_dir)},
                  "command": f"python -m recipe.grow --weights {base_dir} --like {like_dir} --out {out}"}
    # Everything but the weights, the base's own: tokenizer, CMVN, name and word LM.
    return save_checkpoint(out, dataclasses.replace(base, model=model, provenance=provenance))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="the shallower exported checkpoint")
    p.add_argument("--like", required=True, help="a deeper export grown from it (e.g. recipe.train --init WEIGHTS)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        out = grow_like(Path(a.weights), Path(a.like), Path(a.out))
    except ValueError as e:
        p.error(str(e))
    print(f"grew {a.weights} into {out}")


if __name__ == "__main__":
    main()
