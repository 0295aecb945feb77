"""The model core: features, front-end, cache, beam search and checkpoints, on small random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchaudio.compliance import kaldi

from model.alignment import FrameClock, align_words
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import FeatureConfig, ModelConfig
from model.ctc_prefix import CTCPrefixScorer
from model.decoder_scorer import DecoderScorer
from model.decoding import DecodeOptions, beam_search
from model.features import FilterbankFeatures, num_frames
from model.recognizer import Recognizer
from model.scorer import Scorer
from model.testing import make_random_checkpoint
from model.tokenizer import Tokenizer
from model.transformer import SpeechTransformer, padding_mask


@pytest.fixture(scope="module")
def net() -> SpeechTransformer:
    torch.manual_seed(1)
    return SpeechTransformer(ModelConfig(vocab_size=48, d_model=64, n_heads=4, encoder_layers=2, decoder_layers=2,
                                         d_ff=128, dropout=0.0, conv_channels=8)).eval()


def encode(net: SpeechTransformer, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), 80, generator=g)
    lens = torch.tensor(lengths)
    feats = feats * (torch.arange(max(lengths))[None, :] < lens[:, None])[..., None]
    memory, enc_lens = net.encoder(feats, lens)
    return feats, memory, enc_lens


def test_fbank_matches_kaldi_in_a_padded_batch() -> None:
    torch.manual_seed(0)
    lengths = [16000, 7777, 2000]
    wav = torch.zeros(3, 16000)
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.randn(n) * 0.1
    feats, flens = FilterbankFeatures(FeatureConfig())(wav, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        ref = kaldi.fbank(wav[i : i + 1, :n] * 32768, num_mel_bins=80, dither=0.0)
        assert int(flens[i]) == ref.shape[0]
        torch.testing.assert_close(feats[i, : ref.shape[0]], ref, atol=5e-4, rtol=1e-4)
        assert feats[i, ref.shape[0] :].abs().max() == 0 if ref.shape[0] < feats.shape[1] else True


def test_vtlp_warp_matches_kaldi_vtln() -> None:
    torch.manual_seed(0)
    wav = torch.randn(1, 8000) * 0.1
    feats, _ = FilterbankFeatures(FeatureConfig())(wav, torch.tensor([8000]), warp=torch.tensor([0.9]))
    ref = kaldi.fbank(wav * 32768, num_mel_bins=80, vtln_warp=0.9)
    torch.testing.assert_close(feats[0], ref, atol=5e-4, rtol=1e-4)


def test_subsampling_lengths_match_the_convolutions(net: SpeechTransformer) -> None:
    front = net.encoder.subsample
    for n in [7, 8, 50, 101, 333]:
        x, _ = front(torch.randn(1, n, 80), torch.tensor([n]))
        assert x.shape[1] == int(front.output_lengths(torch.tensor([n]))[0])
    assert front.output_lengths(torch.tensor([6, 7, 10, 11])).tolist() == [0, 1, 1, 2]


def test_the_front_end_geometry_is_read_off_the_model(tmp_path: Path) -> None:
    """4x subsampling and a 7-frame receptive field; the shortest waveform that gives an encoder frame follows."""
    rec = Recognizer.load(make_random_checkpoint(tmp_path / "m"), device="cpu")
    assert (rec.model.subsampling_rate(), rec.model.receptive_field()) == (4, 7)
    assert rec.min_samples == 1360  # 85 ms: a 25 ms window and six 10 ms hops
    frames = num_frames(torch.tensor([rec.min_samples - 1, rec.min_samples]), rec.ckpt.features)
    assert rec.model.encoder.subsample.output_lengths(frames).tolist() == [0, 1]
    assert rec.sample_rate == 16000


def test_encoder_output_does_not_change_with_padding(net: SpeechTransformer) -> None:
    feats, memory, enc_lens = encode(net, [300, 120, 41])
    for i, n in enumerate([300, 120, 41]):
        alone, alone_len = net.encoder(feats[i : i + 1, :n], torch.tensor([n]))
        assert int(alone_len[0]) == int(enc_lens[i])
        torch.testing.assert_close(memory[i, : alone_len[0]], alone[0], atol=1e-5, rtol=1e-5)


def test_cached_step_logits_equal_full_prefix_recompute(net: SpeechTransformer) -> None:
    _, memory, enc_lens = encode(net, [200, 90])
    dec = net.decoder
    mem_kv = dec.memory_kv(memory)
    mask = padding_mask(enc_lens, memory.shape[1])
    tokens = torch.randint(4, 48, (2, 12))
    tokens[:, 0] = net.cfg.sos_id
    cache = dec.new_cache(2, 12, memory.device, memory.dtype)
    full = dec(tokens, mem_kv, mask)
    for t in range(12):
        step = dec.step(tokens[:, t], cache, mem_kv, mask, beams=1)
        torch.testing.assert_close(step, full[:, t], atol=1e-4, rtol=1e-4)


def test_cache_reorder_follows_beam_parents(net: SpeechTransformer) -> None:
    cache = net.decoder.new_cache(4, 5, torch.device("cpu"), torch.float32)
    for layer in range(net.cfg.decoder_layers):
        cache.write(layer, torch.arange(4.0)[:, None, None, None].expand(4, 4, 1, 16), torch.zeros(4, 4, 1, 16))
    cache.advance()
    cache.reorder(torch.tensor([3, 3, 0]))
    assert cache.rows == 3
    assert cache.k[0, :3, 0, 0, 0].tolist() == [3.0, 3.0, 0.0]


def test_batched_beam_search_equals_each_utterance_alone(net: SpeechTransformer) -> None:
    lengths = [400, 37, 150, 9]
    feats, memory, enc_lens = encode(net, lengths, seed=3)
    opts = DecodeOptions(beam_size=4, n_best=3, ctc_weight=0.0)
    batched = beam_search(net, memory, enc_lens, opts)
    for i, n in enumerate(lengths):
        m, l = net.encoder(feats[i : i + 1, :n], torch.tensor([n]))
        alone = beam_search(net, m, l, opts)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        for a, b in zip(alone, batched[i]):
            assert a.score == pytest.approx(b.score, abs=1e-4)
    assert len(batched[0]) == 3 and all(1 <= len(b) <= 3 for b in batched)  # a 1-frame utterance allows one
    assert all(b[i].score >= b[i + 1].score for b in batched for i in range(len(b) - 1))


@torch.no_grad()
def greedy_reference(model: SpeechTransformer, memory: torch.Tensor, lengths: torch.Tensor) -> list[tuple[int, ...]]:
    """Arg-max decoding with the KV cache, written independently of the beam search: what beam size 1 must give."""
    cfg, dec = model.cfg, model.decoder
    batch = memory.shape[0]
    mask = padding_mask(lengths, memory.shape[1])
    mem_kv = dec.memory_kv(memory)
    max_lens = lengths.clamp(1, cfg.max_target_positions - 1)  # one token per encoder frame at most
    cache = dec.new_cache(batch, int(max_lens.max()), memory.device, mem_kv[0][0].dtype)
    last = torch.full((batch,), cfg.sos_id, dtype=torch.long)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    for t in range(int(max_lens.max())):
        last = dec.step(last, cache, mem_kv, mask, 1).argmax(-1)
        last = torch.where(max_lens == t + 1, torch.full_like(last, cfg.eos_id), last)
        for i in (~done).nonzero().squeeze(1).tolist():
            if int(last[i]) != cfg.eos_id:
                out[i].append(int(last[i]))
        done |= last == cfg.eos_id
        if bool(done.all()):
            break
    return [tuple(o) for o in out]


def test_beam_size_one_equals_greedy(net: SpeechTransformer) -> None:
    _, memory, enc_lens = encode(net, [250, 60, 120], seed=5)
    greedy = greedy_reference(net, memory, enc_lens)
    beam = beam_search(net, memory, enc_lens, DecodeOptions(beam_size=1, ctc_weight=0.0))
    assert [b[0].tokens for b in beam] == greedy


@torch.no_grad()
def test_the_decoder_and_the_ctc_head_are_scorers_of_one_interface(net: SpeechTransformer) -> None:
    _, memory, enc_lens = encode(net, [160, 80], seed=7)
    decoder = DecoderScorer(net.decoder, memory, enc_lens, beams=2, max_len=4, sos_id=net.cfg.sos_id)
    ctc = CTCPrefixScorer(net.ctc_head(memory).log_softmax(-1), enc_lens, beams=2, blank=0, eos=net.cfg.eos_id)
    assert isinstance(decoder, Scorer) and isinstance(ctc, Scorer)
    every = decoder.extend(None)
    assert every.shape == (4, net.cfg.vocab_size)
    tokens = every.topk(3, dim=-1).indices
    ctc.extend(tokens)
    rows, chosen = torch.tensor([1, 1]), tokens[1, :2]  # the second utterance leaves; both beams follow row 1
    for scorer in (decoder, ctc):
        scorer.select(rows, chosen)
    assert decoder.mask.shape[0] == 1 and decoder.extend(None).shape == (2, net.cfg.vocab_size)
    assert ctc.extend(None).shape == (2, net.cfg.vocab_size)


def test_cache_and_recompute_give_the_same_beams(net: SpeechTransformer) -> None:
    _, memory, enc_lens = encode(net, [160, 80], seed=7)
    a = beam_search(net, memory, enc_lens, DecodeOptions(beam_size=3, n_best=3, ctc_weight=0.0))
    b = beam_search(net, memory, enc_lens, DecodeOptions(beam_size=3, n_best=3, ctc_weight=0.0, use_cache=False))
    assert [[h.tokens for h in x] for x in a] == [[h.tokens for h in x] for x in b]


def test_output_length_is_bounded_by_encoder_length(net: SpeechTransformer) -> None:
    _, memory, enc_lens = encode(net, [40], seed=9)
    hyps = beam_search(net, memory, enc_lens, DecodeOptions(beam_size=2, min_len=1000, max_len_ratio=1.0, ctc_weight=0))
    assert len(hyps[0][0].tokens) < int(enc_lens[0])


def test_the_papers_configuration_is_expressible() -> None:
    cfg = ModelConfig(vocab_size=512, d_model=256, n_heads=4, encoder_layers=12, decoder_layers=6, d_ff=2048)
    net = SpeechTransformer(cfg)
    assert len(net.encoder.blocks) == 12 and len(net.decoder.blocks) == 6
    assert net.encoder.blocks[0].ff[0].out_features == 2048
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=512, d_model=250, n_heads=4)


def test_decode_options_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        DecodeOptions(beam_size=0)
    with pytest.raises(ValueError):
        DecodeOptions(beam_size=2, n_best=3)


def test_checkpoint_round_trip_is_bit_exact(tmp_path: Path) -> None:
    src = make_random_checkpoint(tmp_path / "a")
    ckpt = load_checkpoint(src)
    again = load_checkpoint(save_checkpoint(tmp_path / "b", ckpt))
    for (k, v), (k2, v2) in zip(ckpt.model.state_dict().items(), again.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(ckpt.cmvn_mean, again.cmvn_mean) and torch.equal(ckpt.cmvn_std, again.cmvn_std)
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (tmp_path / "b" / "tokenizer.model").read_bytes()


def test_corrupt_or_mismatched_checkpoints_are_rejected_clearly(tmp_path: Path) -> None:
    src = make_random_checkpoint(tmp_path / "ok")
    weights = src / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(src)

    other = make_random_checkpoint(tmp_path / "shape")
    config = json.loads((other / "config.json").read_text())
    config["model"]["d_model"] = 32
    config["model"]["n_heads"] = 2
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="architecture"):
        load_checkpoint(other)

    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path / "nothing-here")

    truncated = make_random_checkpoint(tmp_path / "trunc")
    w = truncated / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)


def test_recognizer_results_do_not_depend_on_batch_company(tmp_path: Path) -> None:
    rec = Recognizer.load(make_random_checkpoint(tmp_path / "m"), device="cpu")
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 4000, 30000)]
    together = rec.transcribe(waves, DecodeOptions(beam_size=3))
    for w, r in zip(waves, together):
        assert rec.transcribe([w], DecodeOptions(beam_size=3))[0].text == r.text
    assert together[1].duration == pytest.approx(0.25)
    assert rec.transcribe([np.zeros(10, np.float32)])[0].text is not None  # shorter than one frame: no crash


def test_tokenizer_decodes_a_bare_boundary_piece_to_one_space() -> None:
    """The shipped model sometimes emits '▁' before '▁word'; the transcript must not carry a double space."""
    tok = Tokenizer(Path(__file__).resolve().parents[1] / "weights" / "tokenizer.model")
    sp = tok.sp
    boundary = sp.piece_to_id("\u2581")
    word = next(i for i in range(4, sp.get_piece_size()) if sp.id_to_piece(i).startswith("\u2581") and len(sp.id_to_piece(i)) > 2)
    assert sp.decode([word, boundary, word]).count("  ") == 1  # what sentencepiece alone gives
    text = tok.decode([word, boundary, word, 3])
    assert "  " not in text and text == text.strip()
    assert text.split() == [sp.id_to_piece(word)[1:]] * 2


def test_word_alignment_puts_words_where_the_ctc_head_fires() -> None:
    """Hand-made CTC posteriors: each token fires on known frames; words span their tokens' frames."""
    tok = Tokenizer(Path(__file__).resolve().parents[1] / "weights" / "tokenizer.model")
    ids = tok.encode("the weather is lovely")
    clock = FrameClock.for_features(FeatureConfig(), subsampling_rate=4, receptive_field=7)
    assert clock.frame_s == pytest.approx(0.04)
    frames = 60
    logits = torch.full((frames, tok.vocab_size), -10.0)
    logits[:, 0] = 0.0  # blank everywhere ...
    fire = {}
    for k, token in enumerate(ids):  # ... except where each token fires: frames 5k+3 and 5k+4
        fire[k] = (5 * k + 3, 5 * k + 4)
        logits[5 * k + 3 : 5 * k + 5, token] = 10.0
    words = align_words(logits.log_softmax(-1), ids + [3], tok, clock, blank=0, duration=10.0)
    assert [w.word for w in words] == ["the", "weather", "is", "lovely"]
    starts = [k for k, t in enumerate(ids) if tok.starts_word(t)]
    ends = [s - 1 for s in starts[1:]] + [len(ids) - 1]
    for w, first, last in zip(words, starts, ends):
        assert w.start == pytest.approx(clock.at(fire[first][0]), abs=1e-3)
        assert w.end == pytest.approx(clock.at(fire[last][1] + 1), abs=1e-3)
    # Too few frames for the tokens, or nothing to align: no times rather than made-up ones.
    assert align_words(logits[:3].log_softmax(-1), ids, tok, clock, 0, 10.0) == ()
    assert align_words(logits.log_softmax(-1), [3], tok, clock, 0, 10.0) == ()


def test_kv_cache_reorder_keeps_each_rows_parent_history_as_rows_shrink() -> None:
    from model.kv_cache import KVCache

    torch.manual_seed(0)
    cache = KVCache(2, 6, 2, 8, 4, torch.device("cpu"), torch.float32)
    expected = torch.zeros(2, 6, 2, 0, 4)  # every live row's key prefix, per layer: (layers, rows, heads, t, dim)
    for index in (None, torch.tensor([5, 5, 0, 2, 3, 1]), torch.tensor([1, 1, 4, 0]), torch.tensor([3, 0])):
        if index is not None:  # beam parents, with repeats, then fewer rows as hypotheses finish
            cache.reorder(index)
            expected = expected[:, index]
        k = torch.randn(2, cache.rows, 2, 1, 4)
        for layer in range(2):
            cache.write(layer, k[layer], -k[layer])
        cache.advance()
        expected = torch.cat([expected, k], 3)
        assert torch.equal(cache.k[:, : cache.rows, :, : cache.length], expected)
        assert torch.equal(cache.v[:, : cache.rows, :, : cache.length], -expected)
    assert cache.rows == 2 and cache.length == 4
