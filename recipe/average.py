"""Average the weights of several exported checkpoints into one ("model soup").

    python -m recipe.average --weights weights runs/stage12/final --out runs/soup [--mix 0.75 0.25]

Two fine-tunes of one base often sit in the same basin, and their mean can beat both; ``--mix`` weights the
mean (normalised to sum to one), so the blend can lean towards the checkpoint that is better where it matters. Only exports that share
an architecture, a tokenizer and CMVN statistics can be averaged; anything else is refused. The word LM
of the first checkpoint is carried over when it has one.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from model.checkpoint import WEIGHTS, Checkpoint, load_checkpoint, save_checkpoint
from recipe.state import average_snapshots


def _signature(ckpt: Checkpoint) -> tuple[object, ...]:
    """What must agree for a weight average to mean anything: shapes, token inventory, input normalisation.

    Dropout is left out: it acts only in training, so a fine-tune with more of it still shares its base's
    weights' meaning.
    """
    sp = ckpt.tokenizer.sp
    pieces = tuple((sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size()))
    shape = dataclasses.replace(ckpt.model.cfg, dropout=0.0)
    return (repr(shape), pieces, ckpt.tokenizer.token_list, ckpt.cmvn_kind, ckpt.cmvn_mean.tolist(),
            ckpt.cmvn_std.tolist())


def average_checkpoints(sources: list[Path], out: Path, mix: list[float] | None = None) -> Path:
    """Write the element-wise (``mix``-weighted) mean of ``sources`` to ``out`` as a normal, loadable export."""
    if len(sources) < 2:
        raise ValueError("give at least two checkpoints to average")
    first, *others = [load_checkpoint(s) for s in sources]  # loading validates checksums and architecture
    for src, other in zip(sources[1:], others):
        if _signature(other) != _signature(first):
            raise ValueError(f"{src} differs from {sources[0]} in architecture, tokenizer or CMVN: cannot average")
    first.model.load_state_dict(average_snapshots([s / WEIGHTS for s in sources], mix))
    command = "python -m recipe.average --weights " + " ".join(map(str, sources)) + f" --out {out}"
    if mix is not None:
        command += " --mix " + " ".join(map(str, mix))
    provenance = {"averaged": [{"path": str(s), "provenance": c.provenance} for s, c in zip(sources, [first, *others])],
                  "mix": mix, "command": command}
    # The first checkpoint with the mean weights: its tokenizer, CMVN, name and word LM go with them.
    return save_checkpoint(out, dataclasses.replace(first, provenance=provenance))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", required=True, help="exported checkpoint directories")
    p.add_argument("--out", required=True, help="directory for the averaged export")
    p.add_argument("--mix", type=float, nargs="+", help="one weight per checkpoint (default: equal)")
    a = p.parse_args(argv)
    try:
        out = average_checkpoints([Path(w) for w in a.weights], Path(a.out), a.mix)
    except ValueError as e:
        p.error(str(e))
    print(f"averaged {len(a.weights)} checkpoints into {out}")


if __name__ == "__main__":
    main()
