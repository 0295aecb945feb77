"""Training recipe: augmentation, feature cache, resumable state, and an overfit run that must transcribe exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.recognizer import Recognizer
from recipe.augment import AugmentConfig, augment, convolve, mix_at_snr
from recipe.train import augment_config, feature_dir, learning_rate, noam_lr, spec_augment

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["open the door", "turn on the light", "call my sister", "play some music"]


def test_augment_changes_audio_but_keeps_it_sane() -> None:
    rng = np.random.default_rng(0)
    wave = (np.sin(np.arange(16000) / 8.0) * 0.3).astype(np.float32)
    seen_lengths = set()
    for _ in range(10):
        out, warp = augment(wave, 16000, rng, AugmentConfig(), [wave])
        assert np.isfinite(out).all() and 0 < np.abs(out).max() <= 0.99
        assert 0.88 <= warp <= 1.12
        assert 0.85 * wave.size <= out.size <= 1.15 * wave.size
        seen_lengths.add(out.size)
    assert len(seen_lengths) > 1  # speed perturbation happened


def test_silence_padding_puts_silence_around_the_speech_and_is_off_by_default() -> None:
    wave = (np.sin(np.arange(16000) / 8.0) * 0.3).astype(np.float32)
    quiet = dict(speed=(1.0, 1.0), p_reverb=0.0, p_noise=0.0, p_band=0.0)
    out, _ = augment(wave, 16000, np.random.default_rng(0), AugmentConfig(**quiet), [wave])
    assert out.size == wave.size  # default: no padding
    leads = []
    for seed in range(8):
        out, _ = augment(wave, 16000, np.random.default_rng(seed), AugmentConfig(**quiet, pad_s=1.0, p_pad=1.0), [wave])
        lead = int(np.flatnonzero(out)[0])
        assert wave.size < out.size <= wave.size + 2 * 16000 and lead <= 16000
        leads.append(lead)
    assert max(leads) > 1600  # at least one draw put over 0.1 s of silence in front


def test_mix_at_snr_hits_the_requested_ratio() -> None:
    rng = np.random.default_rng(1)
    speech, noise = rng.standard_normal(8000), rng.standard_normal(8000) * 5
    mixed = mix_at_snr(speech, noise, 10.0)
    snr = 10 * np.log10(np.mean(speech**2) / np.mean((mixed - speech) ** 2))
    assert snr == pytest.approx(10.0, abs=1e-6)


def test_fft_convolution_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    x, h = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(77).astype(np.float32)
    np.testing.assert_allclose(convolve(x, h), np.convolve(x, h)[:1000], atol=1e-4)


def test_noam_schedule_warms_up_then_decays() -> None:
    assert noam_lr(1, 1e-3, 100) < noam_lr(50, 1e-3, 100) < noam_lr(100, 1e-3, 100) == pytest.approx(1e-3)
    assert noam_lr(400, 1e-3, 100) == pytest.approx(5e-4)


def test_cooldown_anneals_linearly_to_zero_only_inside_its_window() -> None:
    plain = {"peak_lr": 1e-3, "warmup_steps": 100}
    cooled = {**plain, "cooldown_from": 400, "cooldown_to": 600}
    assert learning_rate(300, cooled) == learning_rate(300, plain) == noam_lr(300, 1e-3, 100)
    assert learning_rate(400, cooled) == pytest.approx(noam_lr(400, 1e-3, 100))
    assert learning_rate(500, cooled) == pytest.approx(noam_lr(500, 1e-3, 100) / 2)
    assert learning_rate(600, cooled) == learning_rate(700, cooled) == 0.0


def test_feature_cache_follows_the_manifest_content_and_the_settings(tmp_path: Path) -> None:
    manifest = tmp_path / "train.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "one", "duration": 1.0, "voice": "x"}\n')
    first = feature_dir(tmp_path, str(manifest), 3, True, 0)
    assert feature_dir(tmp_path, str(manifest), 3, True, 0) == first
    padded = feature_dir(tmp_path, str(manifest), 3, True, 0, AugmentConfig(pad_s=1.0))
    no_noise = feature_dir(tmp_path, str(manifest), 3, True, 0, AugmentConfig(p_noise=0.0))
    assert len({first, feature_dir(tmp_path, str(manifest), 2, True, 0), padded, no_noise}) == 4
    manifest.write_text('{"audio": "a.wav", "text": "two", "duration": 1.0, "voice": "x"}\n')  # rewritten in place
    assert feature_dir(tmp_path, str(manifest), 3, True, 0) != first


def test_train_config_overrides_augmentation_by_name() -> None:
    assert augment_config({}) == AugmentConfig()
    assert augment_config({"silence_pad_s": 1.0}) == AugmentConfig(pad_s=1.0)
    ablated = augment_config({"silence_pad_s": 1.0, "augment": {"p_noise": 0, "speed": [1.0, 1.0]}})
    assert ablated == AugmentConfig(pad_s=1.0, p_noise=0, speed=(1.0, 1.0))
    with pytest.raises(ValueError, match="p_nosie"):
        augment_config({"augment": {"p_nosie": 0}})


def test_spec_augment_masks_within_each_utterance() -> None:
    cfg = {"spec_freq_masks": 2, "spec_freq_width": 10, "spec_time_masks": 2, "spec_time_width": 20}
    feats = torch.ones(3, 200, 80)
    out = spec_augment(feats, torch.tensor([200, 100, 50]), cfg, torch.Generator().manual_seed(0))
    assert out.shape == feats.shape
    assert (out == 0).any() and (out == 1).float().mean() > 0.5


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_overfit_a_handful_of_utterances(tmp_path: Path) -> None:
    """The whole recipe (features, tokenizer, training, averaging, export) learns four utterances exactly."""
    rows = []
    for i, text in enumerate(SENTENCES):
        wav = tmp_path / f"u{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text], check=True)
        audio, rate = sf.read(wav)
        rows.append({"audio": wav.name, "text": text, "duration": len(audio) / rate, "voice": "espeak:en-us"})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    halves = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]  # trained on together: all four must be learnt
    for half, part in zip(halves, (rows[:2], rows[2:])):
        half.write_text("".join(json.dumps(r) + "\n" for r in part))
    config = {
        "model": {"d_model": 96, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 1, "d_ff": 192,
                  "dropout": 0.0, "conv_channels": 8},
        "tokenizer": {"type": "char", "vocab_size": 40},
        "train": {"peak_lr": 0.004, "warmup_steps": 20, "weight_decay": 0.0, "max_batch_frames": 100000,
                  "label_smoothing": 0.0, "ctc_weight": 0.3, "grad_clip": 5.0, "epochs": 1000,
                  "spec_freq_masks": 0, "spec_freq_width": 0, "spec_time_masks": 0, "spec_time_width": 0,
                  "eval_every": 1000, "eval_each_epoch": False, "snapshot_every": 25, "average_last": 1, "feature_copies": 1, "seed": 0},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "recipe.train", "--train", *map(str, halves), "--dev", str(manifest),
           "--config", str(tmp_path / "config.json"), "--out", str(out), "--work", str(tmp_path / "feats"),
           "--jobs", "1", "--max-steps", "120"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=600)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "exported" and log[-1]["dev_wer"] == 0.0
    assert log[0]["train_utts"] == 4
    provenance = json.loads((out / "final" / "config.json").read_text())["provenance"]
    assert f"--train {halves[0]} {halves[1]} --dev" in provenance["command"]

    rec = Recognizer.load(out / "final", device="cpu")
    waves = [sf.read(tmp_path / r["audio"], dtype="float32")[0] for r in rows]
    import torchaudio.functional as AF

    waves = [AF.resample(torch.from_numpy(w), 22050, 16000).numpy() for w in waves]
    assert [r.text for r in rec.transcribe(waves)] == SENTENCES

    # Resuming a finished run continues from its saved state instead of starting over.
    state = json.loads((out / "state" / "state.json").read_text())
    assert state["step"] == 120

    # Fine-tuning (--init) starts from the exported weights, tokenizer and CMVN: with a zero learning rate the
    # new run exports its base unchanged, where a fresh start would export a random network.
    config["train"].update(peak_lr=0.0, snapshot_every=5)
    (tmp_path / "zero_lr.json").write_text(json.dumps(config))
    tuned = tmp_path / "tuned"
    # A manifest listed twice is drawn from twice as often (how a small corpus is given more weight).
    cmd = [sys.executable, "-m", "recipe.train", "--train", str(manifest), str(manifest), "--dev", str(manifest),
           "--config", str(tmp_path / "zero_lr.json"), "--out", str(tuned), "--work", str(tmp_path / "feats"),
           "--jobs", "1", "--max-steps", "10", "--init", str(out / "final")]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=600)
    base_cfg, tuned_cfg = (json.loads((d / "final" / "config.json").read_text()) for d in (out, tuned))
    assert tuned_cfg["cmvn"] == base_cfg["cmvn"]
    assert tuned_cfg["tokenizer"]["sha256"] == base_cfg["tokenizer"]["sha256"]
    assert tuned_cfg["weights"]["sha256"] == base_cfg["weights"]["sha256"]
    assert tuned_cfg["provenance"]["init"]["provenance"]["steps"] == 120
    assert json.loads((tuned / "log.jsonl").read_text().splitlines()[0])["train_utts"] == 8


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "recipe" / "configs").rglob("*.json")),
                         ids=lambda p: p.name)
def test_every_shipped_training_config_is_complete_and_builds(config: Path) -> None:
    """The GPU and stage-2 configs are not exercised by a CPU run: at least they must load and build."""
    from model.config import ModelConfig
    from model.transformer import SpeechTransformer

    reference = json.loads((ROOT / "recipe" / "configs" / "default.json").read_text())
    conf = json.loads(config.read_text())
    assert conf.keys() == reference.keys()
    optional = {"cooldown_from", "cooldown_to", "silence_pad_s", "augment"}
    for section in conf:
        assert conf[section].keys() - optional == reference[section].keys(), section
    augment_config(conf["train"])  # known augmentation names only
    window = [conf["train"].get(k) for k in ("cooldown_from", "cooldown_to")]
    assert window == [None, None] or 0 <= window[0] < window[1], "a cool-down needs both ends, in order"
    net = SpeechTransformer(ModelConfig(vocab_size=conf["tokenizer"]["vocab_size"], **conf["model"]))
    assert sum(p.numel() for p in net.parameters()) > 1_000_000


def test_corrupted_eval_set_is_reproducible_and_at_the_asked_snr(tmp_path: Path) -> None:
    from recipe.corrupt import corrupt_manifest
    from recipe.manifest import read_manifest

    clean = read_manifest(ROOT / "tests" / "fixtures" / "clips.jsonl")[:4]
    manifest = tmp_path / "clean.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(u.audio), "text": u.text, "voice": u.voice}) + "\n" for u in clean))
    noisy = read_manifest(corrupt_manifest(manifest, tmp_path / "a", snr_db=10.0))
    assert [u.text for u in noisy] == [u.text for u in clean]
    for u, n in zip(clean, noisy):  # every noise kind (white, pink, brown, babble) lands at 10 dB
        x, _ = sf.read(str(u.audio), dtype="float32")
        y, _ = sf.read(str(n.audio), dtype="float32")
        k = float(np.dot(y, x) / np.dot(x, x))
        snr = 10 * np.log10(np.sum((k * x) ** 2) / np.sum((y - k * x) ** 2))
        assert 9.0 < snr < 11.0, (n.audio, snr)
    again = read_manifest(corrupt_manifest(manifest, tmp_path / "b", snr_db=10.0))
    assert all(a.audio.read_bytes() == b.audio.read_bytes() for a, b in zip(noisy, again))
    reverberant = read_manifest(corrupt_manifest(manifest, tmp_path / "c", rt60=0.5))
    y, _ = sf.read(str(reverberant[0].audio), dtype="float32")
    assert y.size == sf.info(str(clean[0].audio)).frames
    with pytest.raises(ValueError, match="snr-db"):
        corrupt_manifest(manifest, tmp_path / "d")


def test_averaging_exports_gives_a_loadable_mean_and_refuses_mismatches(tmp_path: Path) -> None:
    from model.checkpoint import load_checkpoint
    from model.testing import make_random_checkpoint
    from recipe.average import average_checkpoints

    a, b = make_random_checkpoint(tmp_path / "a", seed=0), make_random_checkpoint(tmp_path / "b", seed=1)
    (a / "lm.arpa.gz").write_bytes(b"lm")
    out = average_checkpoints([a, b], tmp_path / "soup")
    models = [load_checkpoint(d).model.state_dict() for d in (a, b, out)]
    for k, v in models[2].items():
        assert torch.allclose(v, (models[0][k] + models[1][k]) / 2, atol=1e-6)
    assert any(not torch.equal(models[0][k], models[2][k]) for k in models[2])  # the two seeds really differ
    assert (out / "lm.arpa.gz").read_bytes() == b"lm"
    assert len(json.loads((out / "config.json").read_text())["provenance"]["averaged"]) == 2

    more_dropout = make_random_checkpoint(tmp_path / "d", seed=3, dropout=0.2)  # training-only: still averageable
    assert load_checkpoint(average_checkpoints([a, more_dropout], tmp_path / "drop")).model.cfg.dropout == \
        load_checkpoint(a).model.cfg.dropout
    wider = make_random_checkpoint(tmp_path / "c", seed=2, d_ff=256)
    with pytest.raises(ValueError, match="cannot average"):
        average_checkpoints([a, wider], tmp_path / "bad")
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([a], tmp_path / "bad")
    leaning = average_checkpoints([a, b], tmp_path / "leaning", mix=[3, 1])  # weights normalised: 0.75 / 0.25
    mixed = load_checkpoint(leaning).model.state_dict()
    for k, v in mixed.items():
        assert torch.allclose(v, 0.75 * models[0][k] + 0.25 * models[1][k], atol=1e-6)
    assert json.loads((leaning / "config.json").read_text())["provenance"]["mix"] == [3, 1]
    with pytest.raises(ValueError, match="one non-negative weight"):
        average_checkpoints([a, b], tmp_path / "bad", mix=[1.0])


def test_grown_model_transcribes_like_its_base_and_its_new_blocks_learn() -> None:
    """Blocks added by recipe.grow start as identity maps, then take gradient like any other."""
    from model.config import ModelConfig
    from model.transformer import SpeechTransformer
    from recipe.grow import load_grown

    dims = dict(vocab_size=40, d_model=64, n_heads=4, d_ff=128, conv_channels=8, n_mels=80, dropout=0.0)
    torch.manual_seed(0)
    base = SpeechTransformer(ModelConfig(encoder_layers=2, decoder_layers=1, **dims)).eval()
    deep = SpeechTransformer(ModelConfig(encoder_layers=4, decoder_layers=2, **dims)).eval()
    assert load_grown(deep, base.state_dict()) == {"encoder": 2, "decoder": 1}
    feats, lengths = torch.randn(2, 120, 80), torch.tensor([120, 90])
    tokens = torch.randint(4, 40, (2, 7))
    with torch.no_grad():
        for a, b in zip(base(feats, lengths, tokens), deep(feats, lengths, tokens)):
            torch.testing.assert_close(a, b)
    deep.train()
    logits, ctc, _ = deep(feats, lengths, tokens)
    (logits.square().mean() + ctc.square().mean()).backward()
    assert deep.encoder.blocks[3].ff[3].weight.grad.abs().sum() > 0
    assert deep.decoder.blocks[1].cross_attn.out.weight.grad.abs().sum() > 0
    # Same depth loads strictly; a shallower target or another width is refused.
    assert load_grown(SpeechTransformer(ModelConfig(encoder_layers=2, decoder_layers=1, **dims)), base.state_dict()) == {
        "encoder": 0, "decoder": 0}
    with pytest.raises(ValueError, match="blocks"):
        load_grown(SpeechTransformer(ModelConfig(encoder_layers=1, decoder_layers=1, **dims)), base.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_grown(SpeechTransformer(ModelConfig(encoder_layers=4, decoder_layers=2, **{**dims, "d_ff": 256})),
                   base.state_dict())


def test_grow_like_exports_the_base_in_the_deeper_architecture(tmp_path: Path) -> None:
    from model.checkpoint import load_checkpoint
    from model.testing import make_random_checkpoint
    from recipe.average import average_checkpoints
    from recipe.grow import grow_like

    base = make_random_checkpoint(tmp_path / "base", seed=0)
    (base / "lm.arpa.gz").write_bytes(b"lm")
    deep = make_random_checkpoint(tmp_path / "deep", seed=1, encoder_layers=3)  # stands in for a deeper fine-tune
    grown = grow_like(base, deep, tmp_path / "grown")
    b, g, d = (load_checkpoint(x).model.eval() for x in (base, grown, deep))
    feats, lengths, tokens = torch.randn(1, 100, 80), torch.tensor([100]), torch.randint(4, 20, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(b(feats, lengths, tokens)[0], g(feats, lengths, tokens)[0])
    torch.testing.assert_close(g.encoder.blocks[2].attn.q.weight, d.encoder.blocks[2].attn.q.weight)
    assert (grown / "lm.arpa.gz").read_bytes() == b"lm"
    average_checkpoints([grown, deep], tmp_path / "soup")  # same architecture now: averageable
    with pytest.raises(ValueError, match="no deeper"):
        grow_like(base, base, tmp_path / "same")
