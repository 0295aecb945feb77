"""The joint CTC-attention objective (Kim, Hori and Watanabe, 2017) that the Speech-Transformer is trained on.

It lives beside the model rather than in the recipe because it is a fact about the network: which token starts
the decoder's input, which ends its target, and that the CTC blank is the padding id. Training and the dev
loss that training reports both call this one function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .transformer import SpeechTransformer


def joint_ctc_attention_loss(model: SpeechTransformer, feats: torch.Tensor, feat_lengths: torch.Tensor,
                             tokens: torch.Tensor, token_lengths: torch.Tensor, ctc_weight: float,
                             label_smoothing: float,
                             forward: torch.nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``(1 - w) * attention CE + w * CTC``, each summed over tokens and averaged over the batch.

    ``feats`` are normalised ``(B, T, n_mels)``; ``tokens`` ``(B, L)`` hold each transcript's ids padded with
    ``pad_id``, without ``sos``/``eos``. All tensors are on the model's device. Also returns the two parts per
    token (``eos`` included), the figures a training log shows. ``forward``: what runs the model's forward pass
    (a ``DistributedDataParallel`` around it in a parallel run; the model itself by default).
    """
    cfg, b, device = model.cfg, feats.shape[0], feats.device
    sos = torch.full((b, 1), cfg.sos_id, dtype=torch.long, device=device)
    pad = torch.full((b, 1), cfg.pad_id, dtype=torch.long, device=device)
    decoder_input = torch.cat([sos, tokens], 1)
    target = torch.cat([tokens, pad], 1)
    target[torch.arange(b, device=device), token_lengths] = cfg.eos_id
    logits, ctc_logits, enc_lengths = (forward or model)(feats, feat_lengths, decoder_input)
    att = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=cfg.pad_id,
                          label_smoothing=label_smoothing, reduction="sum") / b
    ctc = torch.zeros((), device=device)
    if ctc_logits is not None and ctc_weight > 0:
        log_probs = ctc_logits.float().log_softmax(-1).transpose(0, 1)
        targets = torch.cat([t[:n] for t, n in zip(tokens, token_lengths.tolist())])
        ctc = F.ctc_loss(log_probs, targets, enc_lengths, token_lengths, blank=cfg.pad_id, reduction="sum",
                         zero_infinity=True) / b
    n = float(token_lengths.sum() + b)
    return (1 - ctc_weight) * att + ctc_weight * ctc, {"att": att.item() * b / n, "ctc": ctc.item() * b / n}
