"""CTC prefix scoring and the joint CTC-attention beam search it drives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.ctc_prefix import CTCPrefixScorer
from model.decoding import DecodeOptions, beam_search
from model.transformer import SpeechTransformer

BLANK, EOS = 0, 5


def ctc_logprobs(frames: list[int], vocab: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random CTC posteriors that never emit EOS (it is the search's end marker, not a CTC label)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(len(frames), max(frames), vocab, generator=g)
    logits[..., EOS] = float("-inf")
    return logits.log_softmax(-1), torch.tensor(frames)


def nll(logprobs: torch.Tensor, length: int, tokens: list[int]) -> float:
    return float(F.ctc_loss(logprobs[:length, None], torch.tensor([tokens]), torch.tensor([length]),
                            torch.tensor([len(tokens)]), blank=BLANK, reduction="sum", zero_infinity=False))


def test_whole_sequence_scores_equal_ctc_likelihood_in_a_padded_batch() -> None:
    lp, lengths = ctc_logprobs([12, 7])
    seqs = [[1, 2, 2, 3], [4, 4, 1]]  # repeats need a blank between them: the hard case
    scorer = CTCPrefixScorer(lp, lengths, beams=1, blank=BLANK, eos=EOS)
    prefix = torch.zeros(2)  # the increments of the chosen tokens add up to each row's prefix log-probability
    for step in range(4):
        tokens = torch.tensor([[s[step] if step < len(s) else 1, EOS] for s in seqs])
        gains = scorer.extend(tokens)
        ends = scorer.end_logprob(torch.arange(2))
        for u, s in enumerate(seqs):
            exact = -nll(lp[u], int(lengths[u]), s[:step])
            assert float(ends[u]) == pytest.approx(exact, abs=1e-4)
            assert float(prefix[u] + gains[u, 1]) == pytest.approx(exact, abs=1e-4)
        prefix += gains[:, 0]
        scorer.select(torch.tensor([0, 1]), tokens[:, 0])


def test_prefix_mass_splits_into_ending_here_and_every_continuation() -> None:
    # P(output starts with h) = P(output is h) + sum over labels c of P(output starts with h + c): relative to
    # the prefix, the increments of ending here and of every continuation sum to probability one.
    lp, lengths = ctc_logprobs([9], seed=4)
    scorer = CTCPrefixScorer(lp, lengths, beams=1, blank=BLANK, eos=EOS)
    labels = torch.tensor([[1, 2, 3, 4, EOS]])
    for step in range(3):
        gains = scorer.extend(labels)[0]
        assert float(torch.logsumexp(gains, 0)) == pytest.approx(0.0, abs=1e-4)
        scorer.select(torch.tensor([0]), labels[0, step % 4 : step % 4 + 1])


def test_no_candidates_means_every_token() -> None:
    lp, lengths = ctc_logprobs([9, 6], seed=5)
    every = CTCPrefixScorer(lp, lengths, beams=1, blank=BLANK, eos=EOS).extend(None)
    some = CTCPrefixScorer(lp, lengths, beams=1, blank=BLANK, eos=EOS).extend(torch.tensor([[3, 1], [EOS, 2]]))
    assert every.shape == (2, 6)
    torch.testing.assert_close(some, torch.stack([every[0, [3, 1]], every[1, [EOS, 2]]]))


@pytest.fixture(scope="module")
def net() -> SpeechTransformer:
    torch.manual_seed(2)
    return SpeechTransformer(ModelConfig(vocab_size=32, d_model=64, n_heads=4, encoder_layers=2, decoder_layers=2,
                                         d_ff=128, dropout=0.0, conv_channels=8)).eval()


@torch.no_grad()
def encoded(net: SpeechTransformer, lengths: list[int]):
    g = torch.Generator().manual_seed(11)
    feats = torch.randn(len(lengths), max(lengths), 80, generator=g)
    lens = torch.tensor(lengths)
    feats = feats * (torch.arange(max(lengths))[None, :] < lens[:, None])[..., None]
    memory, enc_lens = net.encoder(feats, lens)
    return feats, memory, enc_lens, net.ctc_head(memory).log_softmax(-1)


def test_joint_scores_are_the_weighted_sum_of_both_whole_sequence_likelihoods(net: SpeechTransformer) -> None:
    _, memory, enc_lens, ctc = encoded(net, [200, 90])
    opts = DecodeOptions(beam_size=4, n_best=4, ctc_weight=0.4, ctc_mode="prefix", length_penalty=0.0)
    for u, hyps in enumerate(beam_search(net, memory, enc_lens, opts, ctc)):
        assert hyps
        for h in hyps:
            exact = -nll(ctc[u], int(enc_lens[u]), list(h.tokens))
            assert h.ctc_logprob == pytest.approx(exact, abs=1e-3)
            assert h.score == pytest.approx(0.6 * h.att_logprob + 0.4 * exact, abs=1e-3)


def test_joint_search_batched_equals_each_utterance_alone(net: SpeechTransformer) -> None:
    lengths = [300, 41, 150]
    feats, memory, enc_lens, ctc = encoded(net, lengths)
    opts = DecodeOptions(beam_size=3, n_best=2, ctc_mode="prefix")
    together = beam_search(net, memory, enc_lens, opts, ctc)
    for i, n in enumerate(lengths):
        with torch.no_grad():
            m, l = net.encoder(feats[i: i + 1, :n], torch.tensor([n]))
            alone = beam_search(net, m, l, opts, net.ctc_head(m).log_softmax(-1))[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[i]], abs=1e-4)


def test_full_ctc_weight_follows_the_ctc_head(net: SpeechTransformer) -> None:
    # With weight 1 the decoder only proposes candidates; among them the CTC head decides. A one-hot CTC
    # posterior for one sequence makes every other ending impossible, so that sequence must win whenever the
    # decoder proposes its tokens: here every token is proposed (a pre-beam as wide as the vocabulary).
    _, memory, enc_lens, _ = encoded(net, [120])
    frames = int(enc_lens[0])
    target = [7, 7, 12, 4, 20]
    lp = torch.full((1, memory.shape[1], 32), -30.0)
    path = [7, 0, 7, 12, 4, 20] + [0] * (frames - 6)
    lp[0, torch.arange(frames), torch.tensor(path)] = 0.0
    hyps = beam_search(net, memory, enc_lens, DecodeOptions(beam_size=4, ctc_weight=1.0, ctc_prebeam=32),
                       lp.log_softmax(-1))
    assert list(hyps[0][0].tokens) == target


@pytest.mark.parametrize("closed_form_max", [0, 10**9])
def test_both_solvers_agree_with_ctc_likelihood(monkeypatch, closed_form_max: int) -> None:
    monkeypatch.setattr("model.ctc_prefix.CLOSED_FORM_MAX", closed_form_max)
    test_whole_sequence_scores_equal_ctc_likelihood_in_a_padded_batch()
    test_prefix_mass_splits_into_ending_here_and_every_continuation()
