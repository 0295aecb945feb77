"""The Speech-Transformer: conv front-end, pre-LN Transformer encoder and decoder, tied output, CTC head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import SUBSAMPLINGS, ModelConfig
from .kv_cache import KVCache


def sinusoids(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)
    return pe


class ScaledPositionalEncoding(nn.Module):
    """``x * sqrt(d) + alpha * PE`` with a learned ``alpha``: the embedding scale and position scale stay balanced."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 10000) -> None:
        super().__init__()
        self.xscale = math.sqrt(d_model)
        self.alpha = nn.Parameter(torch.ones(1))
        self.register_buffer("pe", sinusoids(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.dropout(x * self.xscale + self.alpha * self.pe[offset : offset + x.shape[1]].to(x.dtype))


class ConvSubsampling(nn.Module):
    """Unpadded Conv2d + ReLU layers over (time, mel), `SUBSAMPLINGS` by name (the paper's two 3x3 stride-2
    convolutions give 4x fewer frames), then a projection to d_model.

    Its time geometry (:attr:`rate`, :attr:`receptive_field`, :meth:`output_lengths`) is read off the layers, so
    the front-end is the one place that knows it."""

    def __init__(self, n_mels: int, channels: int, d_model: int, kind: str = "conv2d") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        freq, in_channels = n_mels, 1
        for kernel, stride in SUBSAMPLINGS[kind]:
            layers += [nn.Conv2d(in_channels, channels, kernel, stride=stride), nn.ReLU()]
            freq, in_channels = (freq - kernel) // stride + 1, channels
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Linear(channels * freq, d_model)

    def _time_axis(self) -> list[tuple[int, int]]:
        """(kernel, stride) along time of each convolution, in order."""
        return [(m.kernel_size[0], m.stride[0]) for m in self.conv if isinstance(m, nn.Conv2d)]

    @property
    def rate(self) -> int:
        """Filterbank frames per encoder frame (4)."""
        return math.prod(stride for _, stride in self._time_axis())

    @property
    def receptive_field(self) -> int:
        """Filterbank frames under one encoder frame (7): fewer give no encoder frame at all."""
        field, step = 1, 1
        for kernel, stride in self._time_axis():
            field, step = field + (kernel - 1) * step, step * stride
        return field

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames left from ``lengths`` filterbank frames (unpadded convolutions)."""
        for kernel, stride in self._time_axis():
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        return self.proj(rearrange(x, "b c t f -> b t (c f)")), self.output_lengths(lengths)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)  # (b, t, h*d) -> (b, h, t, d)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k(x)), self.heads(self.v(x))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool = False
    ) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.out(y.transpose(1, 2).flatten(2))  # (b, h, t, d) -> (b, t, h*d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        k, v = self.project_kv(x)
        return self.attend(self.heads(self.q(x)), k, v, mask, causal)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}


class FeedForward(nn.Sequential):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(nn.Linear(cfg.d_model, cfg.d_ff), ACTIVATIONS[cfg.ffn_activation](), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.d_ff, cfg.d_model))


def layer_norm(cfg: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_ln = layer_norm(cfg)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff_ln = layer_norm(cfg)
        self.ff = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_ln(x), mask))
        return x + self.drop(self.ff(self.ff_ln(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_ln = layer_norm(cfg)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.cross_ln = layer_norm(cfg)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff_ln = layer_norm(cfg)
        self.ff = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor
    ) -> torch.Tensor:
        """Whole-prefix (teacher-forced) pass with a causal mask."""
        x = x + self.drop(self.self_attn(self.self_ln(x), causal=True))
        return self.cross_and_ff(x, memory_kv, memory_mask)

    def cross_and_ff(
        self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor
    ) -> torch.Tensor:
        q = self.cross_attn.heads(self.cross_attn.q(self.cross_ln(x)))
        x = x + self.drop(self.cross_attn.attend(q, *memory_kv, memory_mask))
        return x + self.drop(self.ff(self.ff_ln(x)))

    def step(
        self,
        x: torch.Tensor,
        cache: KVCache,
        layer: int,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        memory_mask: torch.Tensor,
        beams: int,
    ) -> torch.Tensor:
        """One new position per row; ``x`` is ``(U*beams, 1, d)`` and the memory is per utterance ``(U, ...)``.

        The search calls this once per layer per token, so it calls the functional ops on the modules' parameters
        directly: with a few rows, module dispatch and einops cost ~10% of a step. The arithmetic is the modules'."""
        sa, ca, ff = self.self_attn, self.cross_attn, self.ff
        h = _norm(self.self_ln, x)
        k, v = cache.write(layer, sa.heads(_linear(sa.k, h)), sa.heads(_linear(sa.v, h)))
        q = sa.heads(_linear(sa.q, h))
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        x = x + _linear(sa.out, y.transpose(1, 2).flatten(2))
        # Cross-attention: the beams of one utterance become query positions against its single copy of the memory.
        h = _norm(self.cross_ln, x).view(-1, beams, x.shape[-1])  # (u*k, 1, d) -> (u, k, d)
        q = ca.heads(_linear(ca.q, h))
        k, v = memory_kv
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=memory_mask)
        x = x + _linear(ca.out, y.transpose(1, 2).flatten(2)).view(x.shape)
        return x + _linear(ff[-1], ff[1](_linear(ff[0], _norm(self.ff_ln, x))))  # FeedForward without its dropout


def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` without module dispatch for a plain Linear (an int8 one, `quantize_int8`, is called)."""
    return F.linear(x, layer.weight, layer.bias) if type(layer) is nn.Linear else layer(x)


def _norm(layer: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.subsample = ConvSubsampling(cfg.n_mels, cfg.conv_channels, cfg.d_model, cfg.subsampling)
        self.pos = ScaledPositionalEncoding(cfg.d_model, cfg.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.encoder_layers))
        self.ln = layer_norm(cfg)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsample(feats, lengths)
        x = self.pos(x)
        mask = padding_mask(lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x), lengths


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, 1, 1, T)`` boolean mask, True where a key is a real frame (SDPA's convention)."""
    return (torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = ScaledPositionalEncoding(cfg.d_model, cfg.dropout, cfg.max_target_positions)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_layers))
        self.ln = layer_norm(cfg)
        self.out = None if cfg.tied_output else nn.Linear(cfg.d_model, cfg.vocab_size)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.out is not None:
            return self.out(self.ln(x))
        return self.ln(x) @ self.embed.weight.T.to(x.dtype)  # output projection tied to the embedding

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of the encoder output: computed once per utterance, reused every step."""
        return [block.cross_attn.project_kv(memory) for block in self.blocks]

    def forward(
        self, tokens: torch.Tensor, memory_kv: list[tuple[torch.Tensor, torch.Tensor]], memory_mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.pos(self.embed(tokens))
        for block, kv in zip(self.blocks, memory_kv):
            x = block(x, kv, memory_mask)
        return self.logits(x)

    def step(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        memory_mask: torch.Tensor,
        beams: int,
    ) -> torch.Tensor:
        """Logits for the next token of every row, given only the newest token ``(rows,)`` and the cache."""
        x = self.pos(self.embed(tokens[:, None]), offset=cache.length)
        for i, (block, kv) in enumerate(zip(self.blocks, memory_kv)):
            x = block.step(x, cache, i, kv, memory_mask, beams)
        cache.advance()
        return self.logits(x)[:, 0]

    def new_cache(self, rows: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        cfg = self.cfg
        return KVCache(cfg.decoder_layers, rows, cfg.n_heads, max_len, cfg.d_model // cfg.n_heads, device, dtype)


class SpeechTransformer(nn.Module):
    """Normalised filterbanks -> encoder -> (attention decoder, CTC head)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.ctc_head = nn.Linear(cfg.d_model, cfg.vocab_size) if cfg.ctc else None
        # The embedding is scaled by sqrt(d) on input and tied to the output: start it at unit scale after that.
        nn.init.normal_(self.decoder.embed.weight, std=cfg.d_model**-0.5)

    def subsampling_rate(self) -> int:
        """Filterbank frames per encoder frame (and per CTC frame)."""
        return self.encoder.subsample.rate

    def receptive_field(self) -> int:
        """Filterbank frames under one encoder frame: the shortest input that gives any output."""
        return self.encoder.subsample.receptive_field

    def forward(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor, tokens_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Teacher-forced pass: attention logits, CTC logits (or None) and encoder lengths."""
        memory, lengths = self.encoder(feats, feat_lengths)
        mask = padding_mask(lengths, memory.shape[1])
        logits = self.decoder(tokens_in, self.decoder.memory_kv(memory), mask)
        ctc = self.ctc_head(memory) if self.ctc_head is not None else None
        return logits, ctc, lengths
