"""Train a Speech-Transformer with the joint CTC-attention objective.

    python -m recipe.train --train data/corpus/train.jsonl [more.jsonl ...] --dev data/corpus/dev_seen.jsonl \
        --config recipe/configs/default.json --out runs/default [--max-minutes 150]

The same command runs on this CPU (bf16 autocast) and on a GPU (bf16 autocast on CUDA). Features are computed
once per training manifest into ``--work`` (adding a manifest reuses the others' features); training resumes
from ``OUT/state`` after an interruption; the exported checkpoint in ``OUT/final`` is the average of the last
weight snapshots.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.config import FeatureConfig, ModelConfig
from model.decoding import DecodeOptions, beam_search
from model.tokenizer import Tokenizer, train_tokenizer
from model.transformer import SpeechTransformer

from .augment import AugmentConfig
from .data import Batch, FeatureSet
from .features import prepare
from .grow import load_grown
from .manifest import read_manifest
from .state import average_snapshots, load_state, save_state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def noam_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then inverse square-root decay."""
    step = max(step, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def learning_rate(step: int, tcfg: dict[str, Any]) -> float:
    """Noam schedule, optionally annealed linearly to zero between ``cooldown_from`` and ``cooldown_to``.

    A final linear cool-down lets a long run settle into a sharper minimum than inverse-square-root decay
    alone reaches in the same number of steps.
    """
    lr = noam_lr(step, tcfg["peak_lr"], tcfg["warmup_steps"])
    begin, end = tcfg.get("cooldown_from"), tcfg.get("cooldown_to")
    if begin is not None and end is not None and step > begin:
        lr *= max(0.0, (end - step) / (end - begin))
    return lr


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, cfg: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    """Frequency and time masks (SpecAugment without time warping), drawn per utterance."""
    b, t, f = feats.shape
    keep = torch.ones(b, t, f, dtype=torch.bool)
    bins, frames = torch.arange(f), torch.arange(t)
    for _ in range(cfg["spec_freq_masks"]):
        width = torch.randint(0, cfg["spec_freq_width"] + 1, (b,), generator=gen)
        start = (torch.rand(b, generator=gen) * (f - width)).long()
        keep &= ~((bins[None] >= start[:, None]) & (bins[None] < (start + width)[:, None]))[:, None, :]
    for _ in range(cfg["spec_time_masks"]):
        limit = torch.minimum(torch.full((b,), cfg["spec_time_width"]), (lengths.float() * 0.1).long())
        width = (torch.rand(b, generator=gen) * (limit + 1)).long()
        start = (torch.rand(b, generator=gen) * (lengths - width).clamp(min=1)).long()
        keep &= ~((frames[None] >= start[:, None]) & (frames[None] < (start + width)[:, None]))[:, :, None]
    return feats * keep.to(feats.device)


def normalise(feats: torch.Tensor, lengths: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    valid = torch.arange(feats.shape[1])[None, :] < lengths[:, None]
    return (feats - mean) / std * valid[..., None]


def joint_loss(model: SpeechTransformer, batch: Batch, feats: torch.Tensor, tcfg: dict[str, Any],
               device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    cfg = model.cfg
    b = feats.shape[0]
    sos = torch.full((b, 1), cfg.sos_id, dtype=torch.long)
    pad_col = torch.full((b, 1), cfg.pad_id, dtype=torch.long)
    tokens_in = torch.cat([sos, batch.tokens], 1)
    target = torch.cat([batch.tokens, pad_col], 1)
    target[torch.arange(b), batch.token_lengths] = cfg.eos_id
    logits, ctc_logits, enc_lengths = model(feats.to(device), batch.feat_lengths.to(device), tokens_in.to(device))
    att = F.cross_entropy(logits.float().flatten(0, 1), target.to(device).flatten(), ignore_index=cfg.pad_id,
                          label_smoothing=tcfg["label_smoothing"], reduction="sum") / b
    w = tcfg["ctc_weight"]
    ctc = torch.zeros((), device=device)
    if ctc_logits is not None and w > 0:
        lp = ctc_logits.float().log_softmax(-1).transpose(0, 1)
        flat = torch.cat([t[:n] for t, n in zip(batch.tokens, batch.token_lengths)])
        ctc = F.ctc_loss(lp, flat.to(device), enc_lengths, batch.token_lengths.to(device), blank=cfg.pad_id,
                         reduction="sum", zero_infinity=True) / b
    tokens = float(batch.token_lengths.sum() + b)
    return (1 - w) * att + w * ctc, {"att": float(att) * b / tokens, "ctc": float(ctc) * b / tokens}


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX); emulated bf16 is ~15x slower here."""
    if device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: SpeechTransformer, data: FeatureSet, tokenizer: Tokenizer, mean: torch.Tensor, std: torch.Tensor,
             tcfg: dict[str, Any], device: torch.device, limit: int = 200) -> dict[str, float]:
    """Dev loss and greedy WER on the first ``limit`` utterances (sorted by length for cheap batches)."""
    model.eval()
    idx = sorted(range(min(limit, len(data))), key=lambda i: data.items[i][2])
    losses, refs, hyps = [], [], []
    for s in range(0, len(idx), 32):
        batch = data.collate(idx[s : s + 32])
        feats = normalise(batch.feats, batch.feat_lengths, mean, std)
        with autocast(device):
            loss, _ = joint_loss(model, batch, feats, tcfg, device)
            memory, lengths = model.encoder(feats.to(device), batch.feat_lengths.to(device))
            out = beam_search(model, memory, lengths, DecodeOptions(beam_size=1, ctc_weight=0.0))
        losses.append(float(loss) * len(batch.texts))
        refs += batch.texts
        hyps += [tokenizer.decode(h[0].tokens) for h in out]
    model.train()
    return {"dev_loss": sum(losses) / len(refs), "dev_wer": jiwer.wer(refs, hyps), "dev_cer": jiwer.cer(refs, hyps),
            "example_ref": refs[len(refs) // 2], "example_hyp": hyps[len(refs) // 2]}


def command_line(args: argparse.Namespace) -> str:
    """The ``recipe.train`` invocation that reproduces this run, recorded in the checkpoint's provenance."""
    parts = []
    for k, v in vars(args).items():
        if v:
            parts.append(f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, list) else str(v)))
    return "python -m recipe.train " + " ".join(parts)


def augment_config(tcfg: dict[str, Any]) -> AugmentConfig:
    """The waveform augmentation a train config asks for: defaults, ``silence_pad_s``, then its ``augment`` keys.

    ``augment`` overrides `AugmentConfig` fields by name (e.g. ``{"p_noise": 0}`` for an ablation without noise);
    an unknown name is an error rather than a silently ignored typo.
    """
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in tcfg.get("augment", {}).items()}
    known = [f.name for f in dataclasses.fields(AugmentConfig)]
    unknown = overrides.keys() - set(known)
    if unknown:
        raise ValueError(f"unknown augment setting(s) {sorted(unknown)}; known: {known}")
    return dataclasses.replace(AugmentConfig(pad_s=float(tcfg.get("silence_pad_s", 0.0))), **overrides)


def feature_dir(work: Path, manifest: str, copies: int, augment: bool, seed: int,
                aug: AugmentConfig = AugmentConfig()) -> Path:
    """Cache folder named by everything the features depend on, the manifest's content included.

    Finished parts are reused on resume, so a manifest rewritten in place (a re-synthesised corpus)
    must get a new folder rather than features of other audio. Augmentation settings other than the
    defaults and the silence padding join the key only when set, so earlier caches keep their names.
    """
    content = hashlib.sha1(Path(manifest).read_bytes()).hexdigest()
    changed = {f.name: getattr(aug, f.name) for f in dataclasses.fields(aug)
               if f.name != "pad_s" and getattr(aug, f.name) != f.default}
    extra = f"|{sorted(changed.items())}" if changed and augment else ""
    key = hashlib.sha1(f"{content}|{copies}|{augment}|{seed}|{aug.pad_s}{extra}".encode()).hexdigest()[:10]
    return work / f"{Path(manifest).stem}-{key}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, nargs="+", help="training manifest(s) (JSONL), trained on together")
    p.add_argument("--dev", required=True, help="dev manifest (JSONL) for loss/WER during training")
    p.add_argument("--config", default=str(Path(__file__).parent / "configs" / "default.json"))
    p.add_argument("--out", default="runs/default")
    p.add_argument("--work", default="data/features", help="feature cache directory")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--jobs", type=int, default=2, help="feature extraction processes")
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and export) after this much training time")
    p.add_argument("--name", default="speech-transformer")
    p.add_argument("--init", help="exported checkpoint to fine-tune (e.g. weights): its weights, tokenizer and "
                   "CMVN replace the fresh ones; --config must describe the same architecture, or the same with more "
                   "encoder/decoder blocks (added on top as identity maps, recipe.grow); keep it on resume")
    a = p.parse_args()

    conf = json.loads(Path(a.config).read_text())
    tcfg = conf["train"]
    seed_everything(tcfg["seed"])
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device))
    if a.threads:
        torch.set_num_threads(a.threads)
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.jsonl").open("a")

    def record(entry: dict[str, Any]) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        tqdm.write(json.dumps(entry))

    aug = augment_config(tcfg)
    train_dirs = [prepare(m, feature_dir(work, m, tcfg["feature_copies"], True, tcfg["seed"], aug),
                          tcfg["feature_copies"], a.jobs, tcfg["seed"], aug=aug)
                  for m in a.train]
    dev_dir = prepare(a.dev, feature_dir(work, a.dev, 1, False, 0), 1, a.jobs, 0, do_augment=False)

    base = load_checkpoint(a.init) if a.init else None
    tok_path = out / "tokenizer.model"
    if base is not None and not tok_path.exists():
        shutil.copyfile(base.tokenizer.path, tok_path)
    if not tok_path.exists():
        text_file = out / "tokenizer_text.txt"
        text_file.write_text("".join(sorted({u.text + "\n" for m in a.train for u in read_manifest(m)})))
        train_tokenizer(text_file, out / "tokenizer", conf["tokenizer"]["vocab_size"], conf["tokenizer"]["type"])
    tokenizer = Tokenizer(tok_path)
    train_set, dev_set = FeatureSet(train_dirs, tokenizer), FeatureSet(dev_dir, tokenizer)
    # A fine-tuned model must see its inputs normalised exactly as its base did.
    mean, std = (base.cmvn_mean, base.cmvn_std) if base is not None else train_set.feature_stats()

    model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **conf["model"])
    model = SpeechTransformer(model_cfg)
    grown: dict[str, int] = {}
    if base is not None:
        grown = load_grown(model, base.model.state_dict())
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg["peak_lr"], betas=(0.9, 0.98), eps=1e-9,
                            weight_decay=tcfg["weight_decay"])
    meta = load_state(out / "state", model, opt) or {"step": 0, "epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0}
    step, epoch, skip, trained_s = meta["step"], meta["epoch"], meta["batch_in_epoch"], meta["train_seconds"]
    params = sum(p.numel() for p in model.parameters())
    record({"event": "start", "params": params, "train_utts": len(train_set), "dev_utts": len(dev_set),
            "device": str(device), "resume_step": step})

    gen = torch.Generator().manual_seed(tcfg["seed"] + step)
    snaps = out / "snapshots"
    snaps.mkdir(exist_ok=True)
    start = time.time() - trained_s
    budget_s = a.max_minutes * 60 if a.max_minutes else float("inf")
    done = False
    model.train()
    bar = tqdm(initial=step, total=a.max_steps or None, desc="train", mininterval=10)
    while epoch < tcfg["epochs"] and not done:
        batches = train_set.batches(tcfg["max_batch_frames"], np.random.default_rng(tcfg["seed"] + epoch))
        for bi, batch in enumerate(train_set.iterate(batches[skip:]), start=skip):
            lr = learning_rate(step + 1, tcfg)
            for g in opt.param_groups:
                g["lr"] = lr
            feats = spec_augment(normalise(batch.feats, batch.feat_lengths, mean, std), batch.feat_lengths, tcfg, gen)
            with autocast(device):
                loss, parts = joint_loss(model, batch, feats, tcfg, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.1f}", att=f"{parts['att']:.2f}", ctc=f"{parts['ctc']:.2f}", lr=f"{lr:.2e}")
            elapsed = time.time() - start
            if step % 50 == 0:
                record({"step": step, "epoch": epoch, "loss": float(loss), **parts, "lr": lr, "gnorm": float(gnorm),
                        "minutes": round(elapsed / 60, 2)})
            stop = (a.max_steps and step >= a.max_steps) or elapsed >= budget_s
            if step % tcfg["snapshot_every"] == 0 or stop:
                save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                          str(snaps / f"step-{step:07d}.safetensors"))
                for old in sorted(snaps.glob("step-*.safetensors"))[: -tcfg["average_last"]]:
                    old.unlink()
                save_state(out / "state", model, opt, {"step": step, "epoch": epoch, "batch_in_epoch": bi + 1,
                                                        "train_seconds": elapsed})
            if step % tcfg["eval_every"] == 0:
                record({"step": step, **evaluate(model, dev_set, tokenizer, mean, std, tcfg, device)})
            if stop:
                done = True
                break
        else:
            epoch, skip = epoch + 1, 0
            dev = evaluate(model, dev_set, tokenizer, mean, std, tcfg, device) if tcfg.get("eval_each_epoch", True) else {}
            record({"event": "epoch", "epoch": epoch, "step": step, **dev})
    bar.close()

    # Export the average of the last snapshots as the final checkpoint.
    paths = sorted(snaps.glob("step-*.safetensors"))[-tcfg["average_last"] :]
    model.load_state_dict(average_snapshots(paths))
    provenance = {"steps": step, "epochs": epoch, "train_minutes": round((time.time() - start) / 60, 1),
                  "averaged_snapshots": [q.name for q in paths], "train_manifest": " ".join(a.train),
                  "train_utterances": len(train_set), "config": conf, "device": str(device),
                  **({"init": {"from": a.init, "provenance": base.provenance, "blocks_added": grown}}
                     if base is not None else {}),
                  "command": command_line(a)}
    final = save_checkpoint(out / "final", Checkpoint(model.cpu(), tokenizer, FeatureConfig(), mean, std, provenance, a.name))
    model.to(device)
    record({"event": "exported", "path": str(final), **evaluate(model, dev_set, tokenizer, mean, std, tcfg, device)})


if __name__ == "__main__":
    main()
