"""``speech-transformer import espnet``: a tiny ESPnet2 Transformer, trained and recorded by ESPnet's own code
(tests/fixtures/espnet/make_fixture.py), must come out of our model code with ESPnet's numbers and transcripts.
No espnet is needed here: the fixture holds ESPnet's outputs."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from app.cli import main
from app.client import stream_file, transcribe_file
from bench.server import ServerProcess
from model.decoding import DecodeOptions
from model.recognizer import Recognizer
from model.transformer import padding_mask

FIXTURE = Path(__file__).parent / "fixtures" / "espnet"
MODEL = FIXTURE / "model"
REFERENCE = json.loads((FIXTURE / "reference.json").read_text())
CLIPS = REFERENCE["clips"]
TOLERANCE = 1e-4


def run_import(src: Path, out: Path, *extra: str) -> int:
    return main(["import", "espnet", str(src), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("espnet") / "ckpt"
    assert run_import(MODEL, out) == 0
    return out


@pytest.fixture(scope="module")
def recognizer(imported: Path) -> Recognizer:
    return Recognizer.load(imported, device="cpu", dtype="float32", lm=None)


def clip_audio(clip: dict) -> torch.Tensor:
    audio, rate = sf.read(FIXTURE / clip["file"], dtype="float32")
    assert rate == 16000
    return torch.from_numpy(audio)


def test_every_recorded_tensor_equals_espnets(recognizer: Recognizer) -> None:
    reference = load_file(str(FIXTURE / "reference.safetensors"))
    model = recognizer.model
    for clip in CLIPS:
        key = Path(clip["file"]).stem
        wav = clip_audio(clip)
        with torch.inference_mode():
            raw, lengths = recognizer.features(wav[None], torch.tensor([wav.numel()]))
            feats = recognizer.cmvn(raw, lengths)
            memory, enc_lengths = model.encoder(feats, lengths)
            ctc = model.ctc_head(memory).log_softmax(-1)
            tokens = reference[f"{key}/tokens"].long()
            ys_in = torch.cat([torch.tensor([model.cfg.sos_id]), tokens])[None]
            mask = padding_mask(enc_lengths, memory.shape[1])
            decoder = model.decoder(ys_in, model.decoder.memory_kv(memory), mask).log_softmax(-1)
        ours = {"feats_raw": raw[0], "feats": feats[0], "encoder_out": memory[0], "ctc_logp": ctc[0],
                "decoder_logp": decoder[0]}
        for name, tensor in ours.items():
            expected = reference[f"{key}/{name}"]
            assert tensor.shape == expected.shape, (key, name)
            error = (tensor - expected).abs().max().item()
            assert error <= TOLERANCE, f"{key}/{name}: max abs difference {error:.2e}"


def test_our_searches_give_espnets_transcripts(recognizer: Recognizer) -> None:
    settings = REFERENCE["speech2text"]
    options = DecodeOptions(beam_size=settings["beam_size"], ctc_weight=settings["ctc_weight"], lm_weight=0.0,
                            lm_fusion_weight=0.0)
    results = recognizer.transcribe([clip_audio(c) for c in CLIPS], options)
    assert [r.text for r in results] == [c["speech2text"] for c in CLIPS]
    # The CTC head alone, greedily: ESPnet's recorded greedy transcripts.
    _, lengths, ctc = recognizer.encode([clip_audio(c) for c in CLIPS])
    for clip, logp, n in zip(CLIPS, ctc, lengths):
        best = torch.unique_consecutive(logp[: int(n)].argmax(-1)).tolist()
        assert recognizer.tokenizer.decode(best) == clip["ctc_greedy"] == clip["text"]


def test_the_imported_checkpoint_serves_like_espnet(imported: Path, tmp_path: Path) -> None:
    """``ASR_WEIGHTS=DIR speech-transformer serve`` at its default settings: REST with word times, and a stream."""
    with ServerProcess(imported, tmp_path / "server.log") as server:
        for clip in CLIPS:
            body = transcribe_file(server.url, FIXTURE / clip["file"])
            assert body["text"] == clip["speech2text"]
        messages = stream_file(server.url, FIXTURE / CLIPS[0]["file"])
    finals = [m["text"] for m in messages if m["type"] == "final"]
    assert " ".join(finals) == CLIPS[0]["speech2text"]


def test_a_zoo_zip_with_stale_absolute_paths_imports_the_same(imported: Path, tmp_path: Path) -> None:
    root = tmp_path / "unpacked"
    shutil.copytree(MODEL, root)
    config_file = next(root.glob("exp/*/config.yaml"))
    config = yaml.safe_load(config_file.read_text())
    stale = "/home/trainer/espnet/egs2/librispeech/asr1"
    config["bpemodel"] = f"{stale}/{config['bpemodel']}"
    config["normalize_conf"]["stats_file"] = f"{stale}/{config['normalize_conf']['stats_file']}"
    config_file.write_text(yaml.safe_dump(config))
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root))
    assert run_import(archive, tmp_path / "from_zip") == 0
    assert (tmp_path / "from_zip" / "model.safetensors").read_bytes() == (imported / "model.safetensors").read_bytes()
    provenance = json.loads((tmp_path / "from_zip" / "config.json").read_text())["provenance"]
    assert provenance["imported_from"] == "espnet2" and provenance["source"] == str(archive)
    assert provenance["espnet_version"] == REFERENCE["espnet"]


def test_overrides_name_the_files(imported: Path, tmp_path: Path) -> None:
    root = tmp_path / "scattered"
    shutil.copytree(MODEL, root)
    config_file = next(root.glob("exp/*/config.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stats = next(root.rglob("feats_stats.npz")).rename(elsewhere / "stats.npz")
    bpe = next(root.rglob("bpe.model")).rename(elsewhere / "tokens.model")
    model_file = next(config_file.parent.glob("*.pth")).rename(elsewhere / "weights.pth")
    assert run_import(root, tmp_path / "a") == 2  # the recorded paths lead nowhere now
    assert run_import(root, tmp_path / "a", "--config", str(config_file), "--model-file", str(model_file),
                      "--stats", str(stats), "--bpemodel", str(bpe)) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (imported / "model.safetensors").read_bytes()


def _edit_config(root: Path, edit) -> None:
    config_file = next(root.glob("exp/*/config.yaml"))
    config = yaml.safe_load(config_file.read_text())
    edit(config)
    config_file.write_text(yaml.safe_dump(config))


def _missing_bpe(root: Path) -> None:
    next(root.rglob("bpe.model")).unlink()


def _conformer(root: Path) -> None:
    _edit_config(root, lambda c: c.update(encoder="conformer"))


def _wider(root: Path) -> None:
    def edit(config: dict) -> None:
        wider = 2 * config["encoder_conf"]["linear_units"]
        for section in ("encoder_conf", "decoder_conf"):
            config[section]["linear_units"] = wider
    _edit_config(root, edit)


def _deeper(root: Path) -> None:
    _edit_config(root, lambda c: c["encoder_conf"].update(num_blocks=c["encoder_conf"]["num_blocks"] + 1))


def _rnn_decoder(root: Path) -> None:
    _edit_config(root, lambda c: c.update(decoder="rnn"))


def _ssl_frontend(root: Path) -> None:
    _edit_config(root, lambda c: c.update(frontend="s3prl"))


def _pickled_object(root: Path) -> None:
    model_file = next(root.rglob("*.pth"))
    torch.save({"model": {"w": torch.zeros(1)}, "extra": zipfile.ZipInfo("x")}, model_file)


@pytest.mark.parametrize("damage, fragment", [
    (_missing_bpe, "bpemodel"),
    (_conformer, "encoder=conformer is not supported"),
    (_rnn_decoder, "decoder=rnn is not supported"),
    (_ssl_frontend, "frontend=s3prl is not supported"),
    (_wider, "has shape"),
    (_deeper, "lacks encoder.blocks"),
    (_pickled_object, "weights_only=True"),
])
def test_bad_sources_get_one_line_and_leave_nothing(tmp_path: Path, capsys, damage, fragment: str) -> None:
    root = tmp_path / "src"
    shutil.copytree(MODEL, root)
    damage(root)
    out = tmp_path / "out"
    assert run_import(root, out) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_a_corrupt_zip_and_an_existing_out_are_refused(imported: Path, tmp_path: Path, capsys) -> None:
    archive = tmp_path / "model.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    assert run_import(archive, tmp_path / "out") == 2
    assert "zip" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert run_import(MODEL, imported) == 2
    assert "--force" in capsys.readouterr().err
    assert run_import(MODEL, imported, "--force") == 0
