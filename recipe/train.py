"""Train a Speech-Transformer with the joint CTC-attention objective.

    python -m recipe.train --train data/corpus/train.jsonl [more.jsonl ...] --dev data/corpus/dev_seen.jsonl \
        --config recipe/configs/default.json --out runs/default [--max-minutes 150]

The same command runs on this CPU (bf16 autocast) and on a GPU (bf16 autocast on CUDA), and under
``torchrun --nproc_per_node N -m recipe.train ...`` as N data-parallel ranks (`recipe.distributed`). Features are computed
once per training manifest into ``--work`` (adding a manifest reuses the others' features); training resumes
from ``OUT/state`` after an interruption; the exported checkpoint in ``OUT/final`` is the average of the last
weight snapshots.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.config import FeatureConfig
from model.decoding import DecodeOptions, beam_search
from model.device import autocast, pick_device, training_dtype
from model.features import GlobalCMVN
from model.loss import joint_ctc_attention_loss
from model.tokenizer import Tokenizer, train_tokenizer
from model.transformer import SpeechTransformer

from .augment import AugmentConfig
from . import distributed
from .data import Batch, FeatureSet
from .distributed import World
from .features import prepare
from .grow import load_grown
from .manifest import read_manifest
from .state import average_snapshots, load_state, save_state
from .train_config import ConfigError, TokenizerSettings, TrainConfig, TrainSettings

# Read top to bottom: the command line, the schedule and SpecAugment, then the four steps that ``main`` runs in
# order: data (features, tokenizer, CMVN), model (built, grown from --init, resumed), the training loop, the export.

# -----------------------------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    return p.parse_args(argv)


def command_line(args: argparse.Namespace) -> str:
    """The ``recipe.train`` invocation that reproduces this run, recorded in the checkpoint's provenance."""
    parts = []
    for k, v in vars(args).items():
        if v:
            parts.append(f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, list) else str(v)))
    return "python -m recipe.train " + " ".join(parts)


class RunLog:
    """``OUT/log.jsonl``: one JSON object per event, appended across resumes and echoed above the progress bar."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a")

    def __call__(self, entry: dict[str, Any]) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        tqdm.write(json.dumps(entry))


# -----------------------------------------------------------------------------------------------------------------
# Schedule and SpecAugment


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def noam_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then inverse square-root decay."""
    step = max(step, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def learning_rate(step: int, peak: float, warmup: int, cooldown_from: int | None = None,
                  cooldown_to: int | None = None) -> float:
    """Noam schedule, optionally annealed linearly to zero between ``cooldown_from`` and ``cooldown_to``.

    A final linear cool-down lets a long run settle into a sharper minimum than inverse-square-root decay
    alone reaches in the same number of steps.
    """
    lr = noam_lr(step, peak, warmup)
    if cooldown_from is not None and cooldown_to is not None and step > cooldown_from:
        lr *= max(0.0, (cooldown_to - step) / (cooldown_to - cooldown_from))
    return lr


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, cfg: TrainSettings, gen: torch.Generator) -> torch.Tensor:
    """Frequency and time masks (SpecAugment without time warping), drawn per utterance."""
    b, t, f = feats.shape
    keep = torch.ones(b, t, f, dtype=torch.bool)
    bins, frames = torch.arange(f), torch.arange(t)
    for _ in range(cfg.spec_freq_masks):
        width = torch.randint(0, cfg.spec_freq_width + 1, (b,), generator=gen)
        start = (torch.rand(b, generator=gen) * (f - width)).long()
        keep &= ~((bins[None] >= start[:, None]) & (bins[None] < (start + width)[:, None]))[:, None, :]
    for _ in range(cfg.spec_time_masks):
        limit = torch.minimum(torch.full((b,), cfg.spec_time_width), (lengths.float() * 0.1).long())
        width = (torch.rand(b, generator=gen) * (limit + 1)).long()
        start = (torch.rand(b, generator=gen) * (lengths - width).clamp(min=1)).long()
        keep &= ~((frames[None] >= start[:, None]) & (frames[None] < (start + width)[:, None]))[:, :, None]
    return feats * keep.to(feats.device)


# -----------------------------------------------------------------------------------------------------------------
# Step 1, data: cached features, the tokenizer and the CMVN statistics


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


def load_or_train_tokenizer(out: Path, manifests: list[str], settings: TokenizerSettings,
                            base: Checkpoint | None) -> Tokenizer:
    """``OUT/tokenizer.model``: the base's when fine-tuning, else trained once on the training transcripts."""
    path = out / "tokenizer.model"
    if base is not None and not path.exists():
        shutil.copyfile(base.tokenizer.path, path)
    if not path.exists():
        text_file = out / "tokenizer_text.txt"
        text_file.write_text("".join(sorted({u.text + "\n" for m in manifests for u in read_manifest(m)})))
        train_tokenizer(text_file, out / "tokenizer", settings.vocab_size, settings.type)
    return Tokenizer(path)


@dataclass
class Data:
    """What the loop reads: tokenized feature sets, and the CMVN that serving applies too (`GlobalCMVN`)."""

    tokenizer: Tokenizer
    train: FeatureSet
    dev: FeatureSet
    cmvn_mean: torch.Tensor
    cmvn_std: torch.Tensor

    def __post_init__(self) -> None:
        self.cmvn = GlobalCMVN(self.cmvn_mean.numel())
        self.cmvn.set_stats(self.cmvn_mean, self.cmvn_std)

    def apply_cmvn(self, batch: Batch) -> torch.Tensor:
        """The batch's filterbanks with global mean/variance normalisation, padding zeroed: the model's input."""
        return self.cmvn(batch.feats, batch.feat_lengths)


def prepare_data(args: argparse.Namespace, cfg: TrainConfig, base: Checkpoint | None) -> Data:
    """Features of every manifest (computed once into ``--work``), the tokenizer and the CMVN statistics."""
    t, work, aug = cfg.train, Path(args.work), cfg.train.augmentation()
    train_dirs = [prepare(m, feature_dir(work, m, t.feature_copies, True, t.seed, aug), t.feature_copies, args.jobs,
                          t.seed, aug=aug)
                  for m in args.train]
    dev_dir = prepare(args.dev, feature_dir(work, args.dev, 1, False, 0), 1, args.jobs, 0, do_augment=False)
    tokenizer = load_or_train_tokenizer(Path(args.out), args.train, cfg.tokenizer, base)
    train_set, dev_set = FeatureSet(train_dirs, tokenizer), FeatureSet(dev_dir, tokenizer)
    # A fine-tuned model must see its inputs normalised exactly as its base did.
    mean, std = (base.cmvn_mean, base.cmvn_std) if base is not None else train_set.feature_stats()
    return Data(tokenizer, train_set, dev_set, mean, std)


# -----------------------------------------------------------------------------------------------------------------
# Step 2, model: built from the config, started from --init, resumed from OUT/state


@dataclass
class Progress:
    """Where training stands; saved beside the optimiser state, so a rerun continues from the same batch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0


def build_model(cfg: TrainConfig, vocab_size: int, base: Checkpoint | None,
                device: torch.device) -> tuple[SpeechTransformer, dict[str, int]]:
    """A fresh network, or ``--init``'s weights in it (returns the blocks added per stack when it is deeper)."""
    model = SpeechTransformer(cfg.model_config(vocab_size))
    grown = load_grown(model, base.model.state_dict()) if base is not None else {}
    return model.to(device), grown


def make_optimizer(model: SpeechTransformer, t: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=t.peak_lr, betas=(0.9, 0.98), eps=1e-9,
                             weight_decay=t.weight_decay)


def resume(out: Path, model: SpeechTransformer, opt: torch.optim.Optimizer) -> Progress:
    """Load ``OUT/state`` (weights, AdamW moments, counters) if an earlier run left one."""
    meta = load_state(out / "state", model, opt)
    return Progress(**meta) if meta is not None else Progress()


# -----------------------------------------------------------------------------------------------------------------
# Step 3, the training loop


def batch_loss(model: SpeechTransformer, batch: Batch, feats: torch.Tensor, t: TrainSettings,
               device: torch.device, forward: torch.nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint CTC-attention loss of a batch whose normalised features are ``feats``, on ``device``."""
    return joint_ctc_attention_loss(model, feats.to(device), batch.feat_lengths.to(device), batch.tokens.to(device),
                                    batch.token_lengths.to(device), t.ctc_weight, t.label_smoothing, forward)


@torch.no_grad()
def evaluate(model: SpeechTransformer, data: Data, t: TrainSettings, device: torch.device,
             limit: int = 200) -> dict[str, Any]:
    """Dev loss and greedy WER on the first ``limit`` utterances (sorted by length for cheap batches)."""
    model.eval()
    idx = sorted(range(min(limit, len(data.dev))), key=lambda i: data.dev.items[i][2])
    losses, refs, hyps = [], [], []
    for s in range(0, len(idx), 32):
        batch = data.dev.collate(idx[s : s + 32])
        feats = data.apply_cmvn(batch)
        with autocast(device, training_dtype(device)):  # bf16 where it is native
            loss, _ = batch_loss(model, batch, feats, t, device)
            memory, lengths = model.encoder(feats.to(device), batch.feat_lengths.to(device))
            out = beam_search(model, memory, lengths, DecodeOptions(beam_size=1, ctc_weight=0.0))
        losses.append(loss.item() * len(batch.texts))
        refs += batch.texts
        hyps += [data.tokenizer.decode(h[0].tokens) for h in out]
    model.train()
    return {"dev_loss": sum(losses) / len(refs), "dev_wer": jiwer.wer(refs, hyps), "dev_cer": jiwer.cer(refs, hyps),
            "example_ref": refs[len(refs) // 2], "example_hyp": hyps[len(refs) // 2]}


def train_step(model: SpeechTransformer, opt: torch.optim.Optimizer, batch: Batch, feats: torch.Tensor, lr: float,
               t: TrainSettings, device: torch.device, forward: torch.nn.Module | None = None,
               scale: float = 1.0) -> tuple[float, dict[str, float], float]:
    """One AdamW update on one batch (this rank's share of it, its loss weighted by ``scale``: see
    `World.loss_scale`); returns the loss, its attention and CTC parts, and the gradient norm."""
    for group in opt.param_groups:
        group["lr"] = lr
    with autocast(device, training_dtype(device)):  # bf16 where it is native
        loss, parts = batch_loss(model, batch, feats, t, device, forward)
    opt.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    opt.step()
    return loss.item(), parts, gnorm.item()


def save_snapshot(out: Path, model: SpeechTransformer, opt: torch.optim.Optimizer, progress: Progress,
                  keep: int) -> None:
    """Weights for the final average (the last ``keep`` kept) and the resumable state."""
    snapshots = out / "snapshots"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(snapshots / f"step-{progress.step:07d}.safetensors"))
    for old in sorted(snapshots.glob("step-*.safetensors"))[:-keep]:
        old.unlink()
    save_state(out / "state", model, opt, dataclasses.asdict(progress))


def train(model: SpeechTransformer, opt: torch.optim.Optimizer, data: Data, t: TrainSettings, progress: Progress,
          args: argparse.Namespace, device: torch.device, log: RunLog, world: World = World(),
          forward: torch.nn.Module | None = None) -> Progress:
    """Epochs of length-bucketed batches until the epochs, ``--max-steps`` or ``--max-minutes`` run out. In a
    parallel run every rank takes its share of each batch; rank 0 evaluates and snapshots."""
    out, gen = Path(args.out), torch.Generator().manual_seed(t.seed + progress.step + 7919 * world.rank)
    (out / "snapshots").mkdir(exist_ok=True)
    start = time.time() - progress.train_seconds
    budget_s = args.max_minutes * 60 if args.max_minutes else float("inf")
    model.train()
    bar = tqdm(initial=progress.step, total=args.max_steps or None, desc="train", mininterval=10,
               disable=not world.main)
    while progress.epoch < t.epochs:
        batches = data.train.batches(t.max_batch_frames, np.random.default_rng(t.seed + progress.epoch))
        for whole in batches[progress.batch_in_epoch :]:
            progress.batch_in_epoch += 1
            if not world.usable(whole):
                continue
            batch = data.train.collate(world.shard(whole))
            lr = learning_rate(progress.step + 1, t.peak_lr, t.warmup_steps, t.cooldown_from, t.cooldown_to)
            feats = spec_augment(data.apply_cmvn(batch), batch.feat_lengths, t, gen)
            loss, parts, gnorm = train_step(model, opt, batch, feats, lr, t, device, forward,
                                            world.loss_scale(len(batch.texts), len(whole)))
            progress.step += 1
            progress.train_seconds = time.time() - start
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.1f}", att=f"{parts['att']:.2f}", ctc=f"{parts['ctc']:.2f}", lr=f"{lr:.2e}")
            if progress.step % 50 == 0:
                log({"step": progress.step, "epoch": progress.epoch, "loss": loss, **parts, "lr": lr, "gnorm": gnorm,
                     "minutes": round(progress.train_seconds / 60, 2)})
            stop = world.any(bool(args.max_steps and progress.step >= args.max_steps)
                             or progress.train_seconds >= budget_s)
            if (progress.step % t.snapshot_every == 0 or stop) and world.main:
                save_snapshot(out, model, opt, progress, t.average_last)
            if progress.step % t.eval_every == 0 and world.main:
                log({"step": progress.step, **evaluate(model, data, t, device)})
            if stop:
                bar.close()
                return progress
        progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
        dev = evaluate(model, data, t, device) if t.eval_each_epoch and world.main else {}
        log({"event": "epoch", "epoch": progress.epoch, "step": progress.step, **dev})
    bar.close()
    return progress


# -----------------------------------------------------------------------------------------------------------------
# Step 4, export: the average of the last snapshots, as a checkpoint the server loads


def export(model: SpeechTransformer, data: Data, cfg: TrainConfig, progress: Progress, base: Checkpoint | None,
           grown: dict[str, int], args: argparse.Namespace, device: torch.device) -> Path:
    """``OUT/final``: the mean of the last ``average_last`` snapshots, with how it was made in its provenance."""
    out = Path(args.out)
    paths = sorted((out / "snapshots").glob("step-*.safetensors"))[-cfg.train.average_last :]
    model.load_state_dict(average_snapshots(paths))
    provenance = {"steps": progress.step, "epochs": progress.epoch,
                  "train_minutes": round(progress.train_seconds / 60, 1),
                  "averaged_snapshots": [q.name for q in paths], "train_manifest": " ".join(args.train),
                  "train_utterances": len(data.train), "config": cfg.source, "device": str(device),
                  **({"init": {"from": args.init, "provenance": base.provenance, "blocks_added": grown}}
                     if base is not None else {}),
                  "command": command_line(args)}
    final = save_checkpoint(out / "final", Checkpoint(model.cpu(), data.tokenizer, FeatureConfig(), data.cmvn_mean,
                                                      data.cmvn_std, provenance, args.name))
    model.to(device)
    return final


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cfg = TrainConfig.load(args.config)
    except ConfigError as e:
        raise SystemExit(f"recipe.train: {e}") from None
    world, device = distributed.start(pick_device(args.device))
    seed_everything(cfg.train.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "log.jsonl") if world.main else (lambda entry: None)

    base = load_checkpoint(args.init) if args.init else None
    with world.first_rank_first():  # rank 0 computes the feature cache and the tokenizer; the others read them
        data = prepare_data(args, cfg, base)
    model, grown = build_model(cfg, data.tokenizer.vocab_size, base, device)
    opt = make_optimizer(model, cfg.train)
    progress = resume(out, model, opt)
    log({"event": "start", "params": sum(p.numel() for p in model.parameters()), "train_utts": len(data.train),
         "dev_utts": len(data.dev), "device": str(device), "resume_step": progress.step, "ranks": world.size})
    progress = train(model, opt, data, cfg.train, progress, args, device, log, world,
                     distributed.wrap(model, world, device))
    if world.main:
        final = export(model, data, cfg, progress, base, grown, args, device)
        log({"event": "exported", "path": str(final), **evaluate(model, data, cfg.train, device)})
    distributed.finish(world)


if __name__ == "__main__":
    main()
