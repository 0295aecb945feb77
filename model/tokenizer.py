"""Sentencepiece tokens (unigram, BPE or characters) with the special ids the model's config expects."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

WORD_START = "\u2581"  # sentencepiece's word-boundary mark
SPECIALS = {"pad": (0, "<pad>"), "unk": (1, "<unk>"), "sos": (2, "<sos>"), "eos": (3, "<eos>")}


class Tokenizer:
    def __init__(self, model_file: str | Path) -> None:
        self.path = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        for name, (idx, piece) in SPECIALS.items():
            if self.sp.id_to_piece(idx) != piece:
                raise ValueError(f"{self.path}: id {idx} is {self.sp.id_to_piece(idx)!r}, expected {piece!r} ({name})")
        self._word_initial = {i for i in range(self.vocab_size) if self.sp.id_to_piece(i).startswith(WORD_START)}

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def starts_word(self, token: int) -> bool:
        """Whether the piece opens a new word (sentencepiece marks those with a leading ``▁``)."""
        return token in self._word_initial

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        # A bare word-boundary piece before a word-initial one decodes to two spaces; transcripts get one.
        return " ".join(self.sp.decode([i for i in ids if i > SPECIALS["eos"][0]]).split())


def train_tokenizer(text_file: str | Path, prefix: str | Path, vocab_size: int, model_type: str = "unigram") -> Path:
    """Train on one sentence per line; ``model_type='char'`` gives a character model. Returns the ``.model`` path."""
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        normalization_rule_name="identity",
        pad_id=0, pad_piece="<pad>", unk_id=1, unk_piece="<unk>",
        bos_id=2, bos_piece="<sos>", eos_id=3, eos_piece="<eos>",
        hard_vocab_limit=model_type != "char",
        minloglevel=2,
    )
    return Path(f"{prefix}.model")
