"""Training recipe: augmentation, feature cache, resumable state, and an overfit run that must transcribe exactly."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.recognizer import Recognizer
from model.transformer import SpeechTransformer
from recipe.augment import AugmentConfig, augment, convolve, mix_at_snr
import recipe.train
from recipe.train import feature_dir, learning_rate, noam_lr, spec_augment
from recipe.train import main as train_main
from recipe.train_config import ConfigError, TrainConfig, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["open the door", "turn on the light", "call my sister", "play some music"]
DEFAULT_CONFIG = ROOT / "recipe" / "configs" / "default.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def train_settings(**overrides: object) -> TrainSettings:
    """The default config's ``train`` section with some settings replaced."""
    return dataclasses.replace(TrainConfig.load(DEFAULT_CONFIG).train, **overrides)


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
    cooled = {"cooldown_from": 400, "cooldown_to": 600}
    assert learning_rate(300, 1e-3, 100, **cooled) == learning_rate(300, 1e-3, 100) == noam_lr(300, 1e-3, 100)
    assert learning_rate(400, 1e-3, 100, **cooled) == pytest.approx(noam_lr(400, 1e-3, 100))
    assert learning_rate(500, 1e-3, 100, **cooled) == pytest.approx(noam_lr(500, 1e-3, 100) / 2)
    assert learning_rate(600, 1e-3, 100, **cooled) == learning_rate(700, 1e-3, 100, **cooled) == 0.0


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
    assert train_settings().augmentation() == AugmentConfig()
    assert train_settings(silence_pad_s=1.0).augmentation() == AugmentConfig(pad_s=1.0)
    ablated = train_settings(silence_pad_s=1.0, augment={"p_noise": 0, "speed": [1.0, 1.0]}).augmentation()
    assert ablated == AugmentConfig(pad_s=1.0, p_noise=0, speed=(1.0, 1.0))
    with pytest.raises(ConfigError, match="p_nosie"):
        train_settings(augment={"p_nosie": 0}).augmentation()


def test_train_config_reads_every_key_and_refuses_unknown_or_missing_ones(tmp_path: Path) -> None:
    conf = json.loads(DEFAULT_CONFIG.read_text())
    cfg = TrainConfig.load(DEFAULT_CONFIG)
    assert cfg.source == conf  # recorded verbatim in the export's provenance
    assert dataclasses.asdict(cfg.tokenizer) == conf["tokenizer"]
    assert {k: getattr(cfg.train, k) for k in conf["train"]} == conf["train"]
    assert {k: getattr(cfg.model, k) for k in conf["model"]} == conf["model"]
    assert cfg.train.cooldown_from is None and cfg.train.eval_each_epoch and cfg.model_config(300).vocab_size == 300

    def refusal(section: str, change: dict) -> str:
        bad = json.loads(json.dumps(conf))
        bad[section].update(change)
        bad[section] = {k: v for k, v in bad[section].items() if v is not None}
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ConfigError) as e:
            TrainConfig.load(tmp_path / "bad.json")
        assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / "bad.json"))
        return str(e.value)

    assert "unknown train setting(s) ['peak_lrr']" in refusal("train", {"peak_lrr": 0.001})
    assert "unknown model setting(s) ['d_modle']" in refusal("model", {"d_modle": 256})
    assert "unknown model setting(s) ['vocab_size']" in refusal("model", {"vocab_size": 256})  # the tokenizer's
    assert "missing train setting(s) ['seed']" in refusal("train", {"seed": None})
    assert "missing tokenizer setting(s) ['type']" in refusal("tokenizer", {"type": None})
    assert "p_nosie" in refusal("train", {"augment": {"p_nosie": 0}})
    assert "not divisible" in refusal("model", {"n_heads": 3})


def test_train_cli_refuses_a_bad_config_in_one_line_before_any_work(tmp_path: Path) -> None:
    conf = json.loads(DEFAULT_CONFIG.read_text())
    conf["train"]["warmup_step"] = conf["train"].pop("warmup_steps")
    (tmp_path / "typo.json").write_text(json.dumps(conf))
    with pytest.raises(SystemExit) as e:
        train_main(["--train", "x.jsonl", "--dev", "y.jsonl", "--config", str(tmp_path / "typo.json"),
                    "--out", str(tmp_path / "run"), "--work", str(tmp_path / "feats")])
    message = str(e.value.code)
    assert message.startswith("recipe.train: ") and "\n" not in message
    assert "unknown train setting(s) ['warmup_step']" in message
    assert not (tmp_path / "run").exists() and not (tmp_path / "feats").exists()


def test_spec_augment_masks_within_each_utterance() -> None:
    cfg = train_settings(spec_freq_masks=2, spec_freq_width=10, spec_time_masks=2, spec_time_width=20)
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
           "--jobs", "1", "--threads", "1", "--max-steps", "120"]  # one thread: faster than two on a shared CPU
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
           "--jobs", "1", "--threads", "1", "--max-steps", "10", "--init", str(out / "final")]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=600)
    base_cfg, tuned_cfg = (json.loads((d / "final" / "config.json").read_text()) for d in (out, tuned))
    assert tuned_cfg["cmvn"] == base_cfg["cmvn"]
    assert tuned_cfg["tokenizer"]["sha256"] == base_cfg["tokenizer"]["sha256"]
    assert tuned_cfg["weights"]["sha256"] == base_cfg["weights"]["sha256"]
    assert tuned_cfg["provenance"]["init"]["provenance"]["steps"] == 120
    assert json.loads((tuned / "log.jsonl").read_text().splitlines()[0])["train_utts"] == 8


TINY = {
    "model": {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64, "dropout": 0.0,
              "conv_channels": 4},
    "tokenizer": {"type": "char", "vocab_size": 40},
    "train": {"peak_lr": 0.002, "warmup_steps": 4, "weight_decay": 0.01, "max_batch_frames": 800,
              "label_smoothing": 0.1, "ctc_weight": 0.3, "grad_clip": 5.0, "epochs": 100,
              "spec_freq_masks": 0, "spec_freq_width": 0, "spec_time_masks": 0, "spec_time_width": 0,
              "eval_every": 1000, "eval_each_epoch": False, "snapshot_every": 2, "average_last": 1,
              "feature_copies": 1, "seed": 0, "augment": {"p_noise": 0, "p_reverb": 0, "p_band": 0}},
}


def test_a_run_resumed_mid_epoch_ends_exactly_where_an_uninterrupted_one_does(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights, AdamW moments and the place in the epoch all come back from OUT/state (nothing random here)."""
    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))  # --threads 1 below
    computed: dict[Path, Path] = {}
    prepare = recipe.train.prepare

    def prepare_once(manifest: str, out_dir: Path, *args: object, **kwargs: object) -> Path:
        """Features as before; a later run finds them without starting the worker pool again."""
        if out_dir not in computed:
            computed[out_dir] = prepare(manifest, out_dir, *args, **kwargs)
        return computed[out_dir]

    monkeypatch.setattr(recipe.train, "prepare", prepare_once)
    rows = [json.loads(line) for line in (ROOT / "tests" / "fixtures" / "clips.jsonl").read_text().splitlines()]
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({**r, "audio": str(ROOT / "tests" / "fixtures" / r["audio"])}) + "\n"
                                for r in rows))
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))

    def train(out: str, steps: int) -> None:
        train_main(["--train", str(manifest), "--dev", str(manifest), "--config", str(tmp_path / "tiny.json"),
                    "--out", str(tmp_path / out), "--work", str(tmp_path / "feats"), "--jobs", "1",
                    "--max-steps", str(steps), "--threads", "1"])

    train("resumed", 3)  # five clips make two batches an epoch: step 3 is inside the second epoch
    state = json.loads((tmp_path / "resumed" / "state" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 1, 1)
    train("resumed", 5)
    train("straight", 5)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [e["resume_step"] for e in log if e.get("event") == "start"] == [0, 3]
    exported = [json.loads((tmp_path / d / "final" / "config.json").read_text()) for d in ("resumed", "straight")]
    assert exported[0]["weights"]["sha256"] == exported[1]["weights"]["sha256"]
    assert exported[0]["provenance"]["config"] == TINY and exported[0]["provenance"]["steps"] == 5


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "recipe" / "configs").rglob("*.json")),
                         ids=lambda p: p.name)
def test_every_shipped_training_config_loads_and_builds(config: Path) -> None:
    """The GPU and stage configs are not exercised by a CPU run: at least they must load (every key known, none
    missing) and build."""
    cfg = TrainConfig.load(config)
    window = [cfg.train.cooldown_from, cfg.train.cooldown_to]
    assert window == [None, None] or 0 <= window[0] < window[1], "a cool-down needs both ends, in order"
    net = SpeechTransformer(cfg.model_config(cfg.tokenizer.vocab_size))
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
    assert json.loads((out / "config.json").read_text())["lm"] == {"file": "lm.arpa.gz", "sha256": sha256(b"lm")}
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
    assert load_checkpoint(grown).lm == grown / "lm.arpa.gz"
    average_checkpoints([grown, deep], tmp_path / "soup")  # same architecture now: averageable
    with pytest.raises(ValueError, match="no deeper"):
        grow_like(base, base, tmp_path / "same")


def test_the_word_lm_is_part_of_the_checkpoint_and_travels_with_it(tmp_path: Path) -> None:
    """A checkpoint without an ``lm`` entry (the shipped one, older exports) finds lm.arpa.* beside its weights;
    saving names the LM with its sha256, so averages, grown models and re-saves carry it; a file that does not
    match is refused."""
    import recipe.lm
    from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from model.testing import make_random_checkpoint
    from recipe.average import average_checkpoints

    old = make_random_checkpoint(tmp_path / "old", seed=0)
    assert "lm" not in json.loads((old / "config.json").read_text()) and load_checkpoint(old).lm is None
    (old / "lm.arpa.gz").write_bytes(b"lm")
    assert load_checkpoint(old).lm == old / "lm.arpa.gz"  # found beside the weights, as before

    saved = save_checkpoint(tmp_path / "saved", load_checkpoint(old))  # elsewhere: the LM is copied and named
    assert (saved / "lm.arpa.gz").read_bytes() == b"lm"
    assert json.loads((saved / "config.json").read_text())["lm"] == {"file": "lm.arpa.gz", "sha256": sha256(b"lm")}
    (saved / "lm.arpa.xz").write_bytes(b"another")  # named in config.json: the entry wins over the file names
    assert load_checkpoint(saved).lm == saved / "lm.arpa.gz"
    other = make_random_checkpoint(tmp_path / "other", seed=1)  # no LM: the average takes the first one's
    soup = average_checkpoints([saved, other], tmp_path / "soup")
    assert load_checkpoint(soup).lm == soup / "lm.arpa.gz"

    (saved / "lm.arpa.gz").write_bytes(b"an LM that does not belong")
    with pytest.raises(CheckpointError, match="lm.arpa.gz: checksum mismatch"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        Recognizer.load(saved, device="cpu", lm=None)
    (saved / "lm.arpa.gz").unlink()
    with pytest.raises(CheckpointError, match="missing lm.arpa.gz"):
        load_checkpoint(saved)

    # Re-estimating the LM into an export (recipe.lm --out DIR/lm.arpa.gz) makes the new file the checkpoint's.
    (tmp_path / "text.txt").write_text("open the door\nturn on the light\n")
    recipe.lm.main(["--text", str(tmp_path / "text.txt"), "--order", "2", "--out", str(saved / "lm.arpa.gz")])
    entry = json.loads((saved / "config.json").read_text())["lm"]
    assert entry == {"file": "lm.arpa.gz", "sha256": sha256((saved / "lm.arpa.gz").read_bytes())}
    assert list(json.loads((saved / "config.json").read_text()))[-1] == "provenance"
    rec = Recognizer.load(saved, device="cpu")
    assert rec.lm is not None and rec.lm.score("open the door") > rec.lm.score("door the open")


def test_short_text_holds_dev_and_test_out_by_text() -> None:
    from recipe.short_text import DIGITS, build

    splits = build(train_lines=2000, dev_lines=60, test_lines=60, seed=3)
    train = set(splits["train"])
    assert len(splits["train"]) == 2000 and len(set(splits["dev"])) == 60 and len(set(splits["test"])) == 60
    assert not train & set(splits["dev"]) and not train & set(splits["test"]) and not set(splits["dev"]) & set(splits["test"])
    assert set(DIGITS) <= train and "oh" in train  # single digits are training's, judged on real speech
    assert all(1 <= len(line.split()) <= 12 for split in splits.values() for line in split)
    assert all(set(line) <= set("abcdefghijklmnopqrstuvwxyz' ") for split in splits.values() for line in split)


def test_telephone_channel_is_narrowband_and_keeps_the_length() -> None:
    from recipe.augment import AugmentConfig, augment, telephone

    rng = np.random.default_rng(0)
    wide = (0.1 * rng.standard_normal(16000)).astype(np.float32)  # flat up to 8 kHz
    for _ in range(6):  # each draw picks a codec: mu-law, A-law or GSM 6.10
        phone = telephone(wide, 16000, rng, (30.0, 30.0))
        assert phone.shape == wide.shape and np.isfinite(phone).all()
        power = np.abs(np.fft.rfft(phone)) ** 2
        freqs = np.fft.rfftfreq(phone.size, 1 / 16000)
        assert power[freqs > 4000].sum() < 0.01 * power.sum()
        assert power[(freqs > 500) & (freqs < 3000)].sum() > 0.5 * power.sum()
    clean = augment(wide, 16000, np.random.default_rng(1), AugmentConfig())
    unchanged = augment(wide, 16000, np.random.default_rng(1), AugmentConfig(p_telephone=0.0))
    np.testing.assert_array_equal(clean[0], unchanged[0])  # off by default: earlier corpora's chains are unchanged


def moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-4) -> float:
    """The share of weights that differ by more than ``tol``, attention key biases aside: their true gradient is
    zero (softmax ignores a constant added to every key's score), so Adam turns float noise into full steps."""
    names = [k for k in a if not k.endswith(".k.bias")]
    return sum(int(((a[k] - b[k]).abs() > tol).sum()) for k in names) / sum(a[k].numel() for k in names)


# What a shared machine's loopback sometimes does to a rendezvous or a gloo connection, not to training itself.
TRANSIENT_LAUNCH_ERRORS = ("RendezvousConnectionError", "RendezvousTimeoutError", "Connection reset by peer",
                           "Connection closed by peer", "Connection refused", "Address already in use")


def test_torchrun_ddp_on_two_cpu_ranks_trains_like_one_process_and_resumes(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m recipe.train``: each rank takes its share of every batch (3 and 2 of 5 clips
    here), and the all-reduced update is the one-process update of the whole batch; a run stopped and started
    again continues from its last snapshot. Weights are compared by the share that moved: AdamW scales every
    step to the learning rate, so a weight whose gradient is float noise (a dead ReLU's) moves by a full step
    either way; one more step moves nearly all of them."""
    from safetensors.torch import load_file

    rows = [json.loads(line) for line in (ROOT / "tests" / "fixtures" / "clips.jsonl").read_text().splitlines()]
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({**r, "audio": str(ROOT / "tests" / "fixtures" / r["audio"])}) + "\n"
                                for r in rows))
    config = json.loads(json.dumps(TINY))
    config["train"]["max_batch_frames"] = 100000  # one batch of all five clips
    (tmp_path / "tiny.json").write_text(json.dumps(config))

    def train(out: str, steps: int, ranks: int) -> dict[str, torch.Tensor]:
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
                    if ranks > 1 else [sys.executable])
        command = [*launcher, "-m", "recipe.train", "--train", str(manifest), "--dev", str(manifest), "--config",
                   str(tmp_path / "tiny.json"), "--out", str(tmp_path / out), "--work", str(tmp_path / "feats"),
                   "--jobs", "1", "--max-steps", str(steps), "--threads", "1"]
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        if run.returncode != 0 and any(m in run.stderr for m in TRANSIENT_LAUNCH_ERRORS):
            warnings.warn(f"torchrun retried after a launch error:\n{run.stderr[-3000:]}")  # seen in CI's summary
            run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-6000:]
        return load_file(str(tmp_path / out / "final" / "model.safetensors"))

    single, parallel = train("single", 4, 1), train("ddp", 4, 2)
    assert single.keys() == parallel.keys()
    assert moved(single, parallel) < 0.02  # measured: 0.8%
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert log[0]["ranks"] == 2 and log[-1]["event"] == "exported"

    halfway = train("ddp_resumed", 2, 2)
    assert moved(parallel, halfway) > 0.5  # the measure sees two steps fewer (one fewer moved 99.4%)
    resumed = train("ddp_resumed", 4, 2)
    starts = [json.loads(line) for line in (tmp_path / "ddp_resumed" / "log.jsonl").read_text().splitlines()]
    assert [e["resume_step"] for e in starts if e.get("event") == "start"] == [0, 2]
    assert moved(resumed, parallel) < 0.02
