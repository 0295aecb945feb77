"""Sentencepiece tokens (unigram, BPE or characters) with the special ids the model's config expects."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

WORD_START = "\u2581"  # sentencepiece's word-boundary mark
SPECIALS = {"pad": (0, "<pad>"), "unk": (1, "<unk>"), "sos": (2, "<sos>"), "eos": (3, "<eos>")}
FOREIGN_SPECIALS = frozenset({"<blank>", "<unk>", "<sos/eos>", "<sos>", "<eos>", "<pad>"})  # ESPnet's token lists


class Tokenizer:
    """Our own checkpoints use the sentencepiece ids as model ids, with `SPECIALS` first. An imported model
    (ESPnet's) has its own ``token_list``: model id ``i`` is the piece ``token_list[i]``, and its specials
    (`FOREIGN_SPECIALS`) are the entries sentencepiece does not spell."""

    def __init__(self, model_file: str | Path, token_list: Sequence[str] | None = None) -> None:
        self.path = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.token_list = list(token_list) if token_list is not None else None
        if self.token_list is None:
            for name, (idx, piece) in SPECIALS.items():
                if self.sp.id_to_piece(idx) != piece:
                    raise ValueError(f"{self.path}: id {idx} is {self.sp.id_to_piece(idx)!r}, expected {piece!r} ({name})")
            self.pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
            self.specials = frozenset(idx for idx, _ in SPECIALS.values())
        else:
            self.pieces = self.token_list
            self.specials = frozenset(i for i, piece in enumerate(self.pieces) if piece in FOREIGN_SPECIALS)
        self._ids = {piece: i for i, piece in enumerate(self.pieces)}
        self.unk_id = self._ids.get("<unk>", SPECIALS["unk"][0])
        self._word_initial = {i for i, piece in enumerate(self.pieces) if piece.startswith(WORD_START)}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def is_text(self, token: int) -> bool:
        """Whether the id spells text (not padding, blank, unknown, start or end)."""
        return 0 <= token < len(self.pieces) and token not in self.specials

    def encode(self, text: str) -> list[int]:
        if self.token_list is None:
            return self.sp.encode(text, out_type=int)
        return [self._ids.get(piece, self.unk_id) for piece in self.sp.encode(text, out_type=str)]

    def starts_word(self, token: int) -> bool:
        """Whether the piece opens a new word (sentencepiece marks those with a leading ``▁``)."""
        return token in self._word_initial

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        # A bare word-boundary piece before a word-initial one decodes to two spaces; transcripts get one.
        return " ".join(self.sp.decode_pieces([self.pieces[i] for i in ids if self.is_text(i)]).split())


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
